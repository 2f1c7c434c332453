// Scripted Raft scenarios: each file in scenarios/ is a readable script of
// commands and expectations run against a TestNetwork (synchronous, lossless
// unless cut). The language, one command per line ('#' starts a comment):
//
//   cluster 1 2 3 [no-pre-vote] [no-check-quorum] [lease-reads]
//   campaign N | tick N K | tick all K | settle | restart N | add-node N
//   propose N DATA [-> CODE]        CODE: ok, Unavailable, FailedPrecondition...
//   conf N add-learner|add-voter|remove M [-> CODE]
//   transfer N M [-> CODE] | read N CONTEXT | compact N
//   cut A B | isolate N | heal | block TYPE | allow TYPE   (TYPE: App, Vote, ...)
//   expect role N leader|follower|candidate|pre-candidate
//   expect term|leader|committed|last|applied-index N VALUE
//   expect term-at N INDEX TERM     (the term of entry INDEX in N's log)
//   expect applied N a,b,c          (normal entries applied, in order; - for none)
//   expect reads N ctx@index,...    expect voters|learners N 1,2,3
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/test_network.h"

namespace cairn::raft {
namespace {

std::string CodeName(const absl::Status& s) {
  return s.ok() ? "ok" : std::string(absl::StatusCodeToString(s.code()));
}

std::string Join(const std::vector<uint64_t>& v) { return v.empty() ? "-" : absl::StrJoin(v, ","); }

std::optional<MessageType> ParseType(const std::string& name) {
  for (int t = 0; t <= static_cast<int>(MessageType::kReadIndexResp); ++t) {
    if (MessageTypeName(static_cast<MessageType>(t)) == name) return static_cast<MessageType>(t);
  }
  return std::nullopt;
}

class ScenarioRunner {
 public:
  explicit ScenarioRunner(std::string file) : file_(std::move(file)) {}

  void Run() {
    std::ifstream in(file_);
    ASSERT_TRUE(in) << "cannot read " << file_;
    std::string line;
    while (std::getline(in, line)) {
      ++line_no_;
      if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
      std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipWhitespace());
      if (w.empty()) continue;
      Command(w);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }

 private:
  std::string Where() const { return file_ + absl::StrCat(":", line_no_); }
  uint64_t N(const std::string& s) { return std::stoull(s); }

  // "... -> CODE": the expected status code, "ok" by default.
  std::string Expected(const std::vector<std::string>& w, size_t at) {
    return w.size() > at + 1 && w[at] == "->" ? w[at + 1] : "ok";
  }

  void Command(const std::vector<std::string>& w) {
    const std::string& c = w[0];
    if (c == "cluster") {
      std::vector<uint64_t> ids;
      bool pre_vote = true, check_quorum = true, lease = false;
      for (size_t i = 1; i < w.size(); ++i) {
        if (w[i] == "no-pre-vote") pre_vote = false;
        else if (w[i] == "no-check-quorum") check_quorum = false;
        else if (w[i] == "lease-reads") lease = true;
        else ids.push_back(N(w[i]));
      }
      net_ = std::make_unique<TestNetwork>(ids, [=](Config& cfg) {
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
        cfg.lease_reads = lease;
        // Node N times out election_tick + N - 1 ticks after hearing from a leader.
        cfg.rand = [id = cfg.id](uint64_t n) { return (id - 1) % n; };
      });
      return;
    }
    ASSERT_NE(net_, nullptr) << Where() << ": no cluster yet";
    if (c == "campaign") {
      net_->Elect(N(w[1]));
    } else if (c == "tick") {
      if (w[1] == "all") net_->TickAll(static_cast<int>(N(w[2])));
      else net_->Tick(N(w[1]), static_cast<int>(N(w[2])));
    } else if (c == "settle") {
      net_->Settle();
    } else if (c == "restart") {
      net_->Restart(N(w[1]));
    } else if (c == "add-node") {
      net_->AddEmptyNode(N(w[1]));
    } else if (c == "propose") {
      EXPECT_EQ(CodeName(net_->raft(N(w[1])).Propose(w[2])), Expected(w, 3)) << Where();
      net_->Settle();
    } else if (c == "conf") {
      static const std::map<std::string, ConfChange::Type> kTypes = {{"add-learner", ConfChange::Type::kAddLearner},
                                                                      {"add-voter", ConfChange::Type::kAddVoter},
                                                                      {"remove", ConfChange::Type::kRemove}};
      ASSERT_TRUE(kTypes.count(w[2])) << Where() << ": unknown change " << w[2];
      EXPECT_EQ(CodeName(net_->raft(N(w[1])).ProposeConfChange({kTypes.at(w[2]), N(w[3])})), Expected(w, 4))
          << Where();
      net_->Settle();
    } else if (c == "transfer") {
      EXPECT_EQ(CodeName(net_->raft(N(w[1])).TransferLeadership(N(w[2]))), Expected(w, 3)) << Where();
      net_->Settle();
    } else if (c == "read") {
      EXPECT_EQ(CodeName(net_->raft(N(w[1])).ReadIndex(w[2])), Expected(w, 3)) << Where();
      net_->Settle();
    } else if (c == "compact") {
      Raft& r = net_->raft(N(w[1]));
      const uint64_t at = r.log().applied();
      ASSERT_TRUE(net_->storage(N(w[1])).CreateSnapshot(at, r.conf(), absl::StrCat("snap@", at), 0).ok());
    } else if (c == "cut") {
      net_->Cut(N(w[1]), N(w[2]));
    } else if (c == "isolate") {
      net_->Isolate(N(w[1]));
    } else if (c == "heal") {
      net_->Heal();
    } else if (c == "block" || c == "allow") {
      auto t = ParseType(w[1]);
      ASSERT_TRUE(t.has_value()) << Where() << ": unknown message type " << w[1];
      if (c == "block") net_->Block(*t);
      else net_->Allow(*t);
    } else if (c == "expect") {
      Expect(w);
    } else {
      FAIL() << Where() << ": unknown command " << c;
    }
  }

  void Expect(const std::vector<std::string>& w) {
    ASSERT_GE(w.size(), 4u) << Where() << ": expect WHAT NODE VALUE";
    const std::string& what = w[1];
    Raft& r = net_->raft(N(w[2]));
    const std::string& want = w[3];
    std::string got;
    if (what == "role") {
      got = std::string(RoleName(r.role()));
    } else if (what == "term") {
      got = std::to_string(r.term());
    } else if (what == "leader") {
      got = std::to_string(r.leader());
    } else if (what == "committed") {
      got = std::to_string(r.log().committed());
    } else if (what == "last") {
      got = std::to_string(r.log().LastIndex());
    } else if (what == "applied-index") {
      got = std::to_string(r.log().applied());
    } else if (what == "term-at") {
      ASSERT_EQ(w.size(), 5u) << Where();
      EXPECT_EQ(std::to_string(r.log().TermOrZero(N(w[3]))), w[4]) << Where();
      return;
    } else if (what == "applied") {
      const auto& a = net_->applied(N(w[2]));
      got = a.empty() ? "-" : absl::StrJoin(a, ",");
    } else if (what == "reads") {
      std::vector<std::string> parts;
      for (const auto& rs : net_->reads(N(w[2]))) parts.push_back(rs.context + absl::StrCat("@", rs.index));
      got = parts.empty() ? "-" : absl::StrJoin(parts, ",");
    } else if (what == "voters") {
      got = Join(r.conf().voters);
    } else if (what == "learners") {
      got = Join(r.conf().learners);
    } else {
      FAIL() << Where() << ": unknown expectation " << what;
    }
    EXPECT_EQ(got, want) << Where() << ": expect " << what << " of node " << w[2];
  }

  std::string file_;
  int line_no_ = 0;
  std::unique_ptr<TestNetwork> net_;
};

class ScenarioTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ScenarioTest, Runs) { ScenarioRunner(std::string(CAIRN_SCENARIO_DIR) + "/" + GetParam()).Run(); }

std::vector<std::string> ScenarioFiles() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(CAIRN_SCENARIO_DIR)) {
    if (e.path().extension() == ".txt") out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

INSTANTIATE_TEST_SUITE_P(Scenarios, ScenarioTest, ::testing::ValuesIn(ScenarioFiles()),
                         [](const auto& info) {
                           std::string name = info.param.substr(0, info.param.size() - 4);
                           for (char& ch : name) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace cairn::raft
