#include "tests/simulation/linearizability.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace cairn::sim {
namespace {

using State = std::optional<std::string>;  // nullopt: the key is absent

// The sequential specification of one key.
bool StepModel(const State& s, const HistoryOp& h, State* next) {
  const std::string current = s ? *s : std::string(kAbsent);
  switch (h.op.kind) {
    case KvOp::Kind::kPut:
      if (h.completed && h.output != "ok") return false;
      *next = h.op.value;
      return true;
    case KvOp::Kind::kGet:
      if (h.completed && h.output != current) return false;
      *next = s;
      return true;
    case KvOp::Kind::kCas: {
      const bool applies = current == h.op.expected;
      if (h.completed && h.output != (applies ? "ok" : "fail")) return false;
      *next = applies ? State(h.op.value) : s;
      return true;
    }
  }
  return false;
}

struct Event {
  bool is_call = false;
  size_t op = 0;
  uint64_t time = 0;
  Event* prev = nullptr;
  Event* next = nullptr;
  Event* match = nullptr;  // call <-> return
};

void Lift(Event* call) {
  call->prev->next = call->next;
  call->next->prev = call->prev;
  Event* ret = call->match;
  ret->prev->next = ret->next;
  if (ret->next) ret->next->prev = ret->prev;
}

void Unlift(Event* call) {
  Event* ret = call->match;
  ret->prev->next = ret;
  if (ret->next) ret->next->prev = ret;
  call->prev->next = call;
  call->next->prev = call;
}

std::string CacheKey(const std::vector<uint64_t>& bits, const State& s) {
  std::string key(reinterpret_cast<const char*>(bits.data()), bits.size() * 8);
  key.push_back(s ? '\1' : '\0');
  if (s) key += *s;
  return key;
}

// Lowe's just-in-time linearization over one key's operations.
bool CheckKey(const std::vector<const HistoryOp*>& ops, uint64_t max_states, uint64_t* explored, bool* gave_up) {
  const size_t n = ops.size();
  std::vector<Event> events(2 * n + 1);
  std::vector<Event*> order;
  for (size_t i = 0; i < n; ++i) {
    Event* c = &events[2 * i + 1];
    Event* r = &events[2 * i + 2];
    c->is_call = true;
    c->op = r->op = i;
    c->time = ops[i]->call;
    r->time = ops[i]->completed ? ops[i]->ret : std::numeric_limits<uint64_t>::max();
    c->match = r;
    r->match = c;
    order.push_back(c);
    order.push_back(r);
  }
  std::stable_sort(order.begin(), order.end(), [](const Event* a, const Event* b) {
    if (a->time != b->time) return a->time < b->time;
    return a->is_call && !b->is_call;  // only unfinished returns tie (at infinity)
  });
  Event* head = &events[0];
  Event* prev = head;
  for (Event* e : order) {
    prev->next = e;
    e->prev = prev;
    prev = e;
  }

  std::vector<uint64_t> linearized((n + 63) / 64, 0);
  std::unordered_set<std::string> cache;
  std::vector<std::pair<Event*, State>> stack;
  State state;
  Event* entry = head->next;
  while (head->next != nullptr) {
    if (++*explored > max_states) {
      *gave_up = true;
      return true;
    }
    if (entry->is_call) {
      State next;
      if (StepModel(state, *ops[entry->op], &next)) {
        linearized[entry->op / 64] |= 1ull << (entry->op % 64);
        if (cache.insert(CacheKey(linearized, next)).second) {
          stack.emplace_back(entry, state);
          state = std::move(next);
          Lift(entry);
          entry = head->next;
          continue;
        }
        linearized[entry->op / 64] &= ~(1ull << (entry->op % 64));
      }
      entry = entry->next;
    } else {
      // A return with its call not linearized: undo the last choice.
      if (stack.empty()) return false;
      auto [e, s] = std::move(stack.back());
      stack.pop_back();
      state = std::move(s);
      linearized[e->op / 64] &= ~(1ull << (e->op % 64));
      Unlift(e);
      entry = e->next;
    }
  }
  return true;
}

}  // namespace

LinearizabilityResult CheckKvLinearizable(const std::vector<HistoryOp>& history, uint64_t max_states) {
  std::map<std::string, std::vector<const HistoryOp*>> by_key;
  for (const HistoryOp& h : history) by_key[h.op.key].push_back(&h);
  LinearizabilityResult result;
  for (const auto& [key, ops] : by_key) {
    bool gave_up = false;
    if (CheckKey(ops, max_states, &result.states_explored, &gave_up)) {
      result.gave_up |= gave_up;
      continue;
    }
    result.ok = false;
    result.key = key;
    std::vector<const HistoryOp*> sorted = ops;
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->call < b->call; });
    for (const HistoryOp* h : sorted) {
      absl::StrAppend(&result.explanation, "  client ", h->client, ": ", DescribeOp(h->op), " [", h->call, ", ",
                      h->completed ? absl::StrCat(h->ret) : std::string("never returned"), "] -> ",
                      h->completed ? h->output : std::string("?"), "\n");
    }
    return result;
  }
  return result;
}

}  // namespace cairn::sim
