#include "cli/ingest.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "cairn/database.h"
#include "cairn/v1/points.grpc.pb.h"
#include "storage/file_util.h"

namespace cairn::cli {

std::atomic<bool> g_interrupted{false};

namespace v1 = cairn::v1;

// ---- InputSource -------------------------------------------------------------

InputSource::InputSource(SourceOptions options) : o_(std::move(options)) {
  pos_.id_base = o_.start_id;
  for (const auto& f : o_.files) {
    struct stat st;
    uint64_t size = f != "-" && ::stat(f.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    sizes_.push_back(size);
    total_size_ += size;
  }
}

absl::Status InputSource::OpenCurrent() {
  ReaderOptions ro = o_.reader;
  if (!o_.payload_files.empty()) ro.payloads_path = o_.payload_files[pos_.file];
  auto r = OpenReader(o_.files[pos_.file], ro);
  if (!r.ok()) return r.status();
  reader_ = *std::move(r);
  return absl::OkStatus();
}

absl::Status InputSource::Seek(const InputPosition& from) {
  if (from.file > o_.files.size()) return absl::InvalidArgumentError("the checkpoint names more files than given");
  reader_.reset();
  pos_ = InputPosition{from.file, 0, from.id_base};
  done_size_ = bytes_done_ = 0;
  for (size_t i = 0; i < from.file; ++i) done_size_ += sizes_[i];
  if (from.file == o_.files.size()) return absl::OkStatus();
  if (auto s = OpenCurrent(); !s.ok()) return s;
  while (pos_.items < from.items) {
    auto rec = reader_->Next();
    if (!rec.ok() && !absl::IsInvalidArgument(rec.status())) return rec.status();
    if (rec.ok() && !rec->has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(o_.files[from.file], " has ", pos_.items,
                                                     " records, fewer than the checkpoint's ", from.items,
                                                     ": the input changed since"));
    }
    ++pos_.items;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<InputRecord>> InputSource::Next() {
  while (pos_.file < o_.files.size()) {
    if (!reader_) {
      if (auto s = OpenCurrent(); !s.ok()) return s;
    }
    auto rec = reader_->Next();
    std::string bad;
    if (!rec.ok()) {
      if (!absl::IsInvalidArgument(rec.status())) return rec.status();
      bad = std::string(rec.status().message());
    } else if (!rec->has_value()) {
      // The file is done: the next one's positional ids follow on.
      pos_.id_base += pos_.items;
      bytes_done_ += reader_->bytes();
      done_size_ += sizes_[pos_.file];
      reader_.reset();
      ++pos_.file;
      pos_.items = 0;
      continue;
    } else if ((*rec)->vector.size() != o_.dimension) {
      bad = absl::StrCat(o_.files[pos_.file], ": record ", (*rec)->number, ": vector has dimension ",
                         (*rec)->vector.size(), "; the collection has ", o_.dimension);
    }
    if (!bad.empty()) {
      if (!o_.skip_bad) return absl::InvalidArgumentError(bad);
      ++pos_.items;
      ++skipped_;
      if (sample_.size() < 5) sample_.push_back(bad);
      continue;
    }
    ++pos_.items;
    auto& r = **rec;
    if (r.positional) r.num_id = pos_.id_base + *r.num_id;
    return rec;
  }
  return std::optional<InputRecord>();
}

double InputSource::fraction() const {
  if (total_size_ == 0) return 0;
  double in_file = reader_ ? reader_->fraction() : 0;
  double cur = pos_.file < sizes_.size() ? static_cast<double>(sizes_[pos_.file]) : 0;
  return std::min(1.0, (static_cast<double>(done_size_) + in_file * cur) / static_cast<double>(total_size_));
}

// ---- Progress ----------------------------------------------------------------

double Progress::Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

namespace {
std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto t = static_cast<long>(s + 0.5);
  if (t >= 3600) return absl::StrCat(t / 3600, "h", (t % 3600) / 60, "m");
  if (t >= 60) return absl::StrCat(t / 60, "m", t % 60, "s");
  return absl::StrCat(t, "s");
}
}  // namespace

void Progress::Update(uint64_t records, uint64_t bytes, double fraction, bool final) {
  if (quiet_) return;
  double now = Now();
  if (!final && now - last_ < (tty_ ? 0.2 : 5.0)) return;
  last_ = now;
  double secs = now - start_;
  double rate = secs > 0 ? records / secs : 0;
  double mbs = secs > 0 ? bytes / 1e6 / secs : 0;
  std::string eta = fraction > 0.001 && !final ? Duration(secs * (1 - fraction) / fraction) : "";
  if (tty_) {
    constexpr int kWidth = 24;
    int filled = static_cast<int>(fraction * kWidth + 0.5);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %3.0f%%  %llu records  %.1f MB  %.0f records/s  %.1f MB/s%s%s\033[K%s",
                 bar.c_str(), fraction * 100, static_cast<unsigned long long>(records), bytes / 1e6, rate, mbs,
                 eta.empty() ? "" : "  ETA ", eta.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "ingest: %.0f%% %llu records, %.1f MB, %.0f records/s, %.1f MB/s%s%s\n", fraction * 100,
                 static_cast<unsigned long long>(records), bytes / 1e6, rate, mbs, eta.empty() ? "" : ", ETA ",
                 eta.c_str());
  }
}

// ---- Checkpoint ----------------------------------------------------------------

namespace {

using Json = nlohmann::json;

struct Checkpoint {
  InputPosition pos;
  uint64_t records = 0;  // records loaded up to pos
  uint64_t skipped = 0;
  // For progress only (not saved): input bytes and fraction read up to pos.
  uint64_t bytes = 0;
  double fraction = 0;
};

Json Fingerprint(const std::vector<std::string>& files) {
  Json out = Json::array();
  for (const auto& f : files) {
    struct stat st;
    bool ok = f != "-" && ::stat(f.c_str(), &st) == 0;
    out.push_back({{"path", f}, {"size", ok ? st.st_size : -1}, {"mtime", ok ? st.st_mtime : -1}});
  }
  return out;
}

class CheckpointFile {
 public:
  CheckpointFile(std::string path, const std::string& collection, const SourceOptions& src)
      : path_(std::move(path)) {
    header_ = {{"version", 1},
               {"collection", collection},
               {"files", Fingerprint(src.files)},
               {"payload_files", src.payload_files},
               {"format", src.reader.format},
               {"dataset", src.reader.hdf5_dataset},
               {"start_id", src.start_id}};
  }

  // Reads the checkpoint left by an interrupted run of the same ingest.
  absl::StatusOr<Checkpoint> Load() const {
    std::FILE* f = std::fopen(path_.c_str(), "rb");
    if (f == nullptr) {
      return absl::NotFoundError(absl::StrCat("--resume: no checkpoint at ", path_,
                                              " (nothing to resume; run without --resume to start)"));
    }
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
    std::fclose(f);
    auto j = Json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("position")) {
      return absl::DataLossError(absl::StrCat(path_, ": not a cairn ingest checkpoint"));
    }
    for (const char* key : {"collection", "format", "dataset", "start_id", "payload_files"}) {
      if (j.value(key, Json()) != header_[key]) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--resume: the checkpoint ", path_, " is for a different ingest (", key, " was ", j.value(key, Json()).dump(),
            ", now ", header_[key].dump(), "); run the same command, or start over without --resume"));
      }
    }
    const Json& then = j["files"];
    const Json& now = header_["files"];
    if (!then.is_array() || then.size() != now.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--resume: the checkpoint ", path_, " lists other files; give the same files in the same order"));
    }
    for (size_t i = 0; i < now.size(); ++i) {
      if (then[i].value("path", "") != now[i]["path"]) {
        return absl::FailedPreconditionError(absl::StrCat("--resume: file ", i + 1, " was ", then[i].value("path", ""),
                                                          ", now ", now[i]["path"].get<std::string>()));
      }
      if (then[i].value("size", -2) != now[i]["size"] || then[i].value("mtime", -2) != now[i]["mtime"]) {
        std::fprintf(stderr, "cairn: warning: %s changed since the checkpoint was written; resuming by position\n",
                     now[i]["path"].get<std::string>().c_str());
      }
    }
    Checkpoint c;
    const Json& p = j["position"];
    c.pos.file = p.value("file", size_t{0});
    c.pos.items = p.value("items", uint64_t{0});
    c.pos.id_base = p.value("id_base", uint64_t{0});
    c.records = j.value("records", uint64_t{0});
    c.skipped = j.value("skipped", uint64_t{0});
    return c;
  }

  absl::Status Save(const Checkpoint& c) const {
    Json j = header_;
    j["position"] = {{"file", c.pos.file}, {"items", c.pos.items}, {"id_base", c.pos.id_base}};
    j["records"] = c.records;
    j["skipped"] = c.skipped;
    return cairn::storage::WriteFileAtomic(path_, j.dump(1) + "\n");
  }

  void Remove() const { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  Json header_;
};

uint64_t IdHash(const InputRecord& r) {
  if (r.num_id) return std::hash<uint64_t>()(*r.num_id) * 0x9E3779B97F4A7C15ull;
  return std::hash<std::string>()(*r.str_id) ^ 0x5bd1e995ull;
}

// Upserts are idempotent, so anything transient is worth another try.
// CANCELLED is among them: a server that shuts down cancels the calls it has
// received but not yet started (gRPC core answers them "CANCELLED"); this
// program never cancels its own calls.
bool Retryable(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::ABORTED:
      return true;
    default:
      return false;
  }
}


// One request: several messages sent over one UpsertStream call and
// acknowledged together.
struct Chunk {
  uint64_t seq = 0;
  std::vector<v1::UpsertRequest> messages;
  std::vector<uint64_t> ids;  // id hashes, to order requests that share ids
  InputPosition end;          // input position after the chunk
  uint64_t records_end = 0;   // records loaded once this chunk and all before it are
  uint64_t skipped_end = 0;
  uint64_t bytes_end = 0;     // input bytes read, and the fraction of the input, at `end`
  double fraction_end = 0;
};

// Requests in flight on several threads. Requests that share an id are never
// in flight together: a later one waits for the earlier one's
// acknowledgement, so the last write of an id wins even across retries.
class Pipeline {
 public:
  Pipeline(std::shared_ptr<grpc::Channel> channel, std::function<void(grpc::ClientContext*)> prepare,
           const OnlineOptions& o, CheckpointFile* ckpt, Checkpoint committed)
      : stub_(v1::Points::NewStub(channel)), prepare_(std::move(prepare)), o_(o), ckpt_(ckpt),
        committed_(committed) {
    for (int i = 0; i < std::max(1, o.inflight); ++i) threads_.emplace_back([this] { Run(); });
  }
  ~Pipeline() { Close(); }

  // Queues a request; false when the pipeline has failed (see error()).
  bool Submit(Chunk c) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] {
      if (!error_.ok()) return true;
      if (queue_.size() + busy_ >= static_cast<size_t>(std::max(1, o_.inflight))) return false;
      for (uint64_t id : c.ids) {
        if (ids_.count(id)) return false;
      }
      return true;
    });
    if (!error_.ok()) return false;
    for (uint64_t id : c.ids) ++ids_[id];
    c.seq = next_seq_++;
    queue_.push_back(std::move(c));
    cv_.notify_all();
    return true;
  }

  // Waits for everything queued, stops the threads.
  void Close() {
    {
      std::unique_lock l(mu_);
      closed_ = true;
      cv_.notify_all();
    }
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  grpc::Status error() {
    std::lock_guard l(mu_);
    return error_;
  }
  uint64_t points() const { return points_.load(); }
  uint64_t retries() const { return retries_.load(); }
  Checkpoint committed() {
    std::lock_guard l(mu_);
    return committed_;
  }

 private:
  void Run() {
    while (true) {
      Chunk c;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [&] { return !queue_.empty() || closed_; });
        if (queue_.empty()) return;
        c = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
      }
      grpc::Status s = error().ok() ? Send(c) : grpc::Status(grpc::StatusCode::CANCELLED, "stopped");
      std::unique_lock l(mu_);
      --busy_;
      for (uint64_t id : c.ids) {
        if (--ids_[id] == 0) ids_.erase(id);
      }
      if (!s.ok()) {
        if (error_.ok()) error_ = s;
      } else {
        done_[c.seq] = Checkpoint{c.end, c.records_end, c.skipped_end, c.bytes_end, c.fraction_end};
        // The checkpoint moves over the unbroken run of acknowledged requests.
        bool moved = false;
        while (!done_.empty() && done_.begin()->first == next_commit_) {
          committed_ = done_.begin()->second;
          done_.erase(done_.begin());
          ++next_commit_;
          moved = true;
        }
        if (moved && ckpt_ != nullptr) {
          // The file is written (and fsynced) outside mu_, so the other
          // senders and Submit do not wait on the disk; save_mu_ keeps an
          // older position from overwriting a newer one.
          const Checkpoint at = committed_;
          const uint64_t seq = next_commit_;
          cv_.notify_all();
          l.unlock();
          std::lock_guard save(save_mu_);
          if (seq > saved_seq_) {
            saved_seq_ = seq;
            if (auto w = ckpt_->Save(at); !w.ok()) {
              std::fprintf(stderr, "cairn: warning: cannot write the checkpoint: %s\n", std::string(w.message()).c_str());
            }
          }
          continue;
        }
      }
      cv_.notify_all();
    }
  }

  grpc::Status Send(const Chunk& c) {
    thread_local std::mt19937_64 rng(std::random_device{}());
    double backoff = 0.25;
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext ctx;
      prepare_(&ctx);
      v1::UpsertResponse resp;
      auto w = stub_->UpsertStream(&ctx, &resp);
      for (const auto& m : c.messages) {
        if (!w->Write(m)) break;
      }
      w->WritesDone();
      grpc::Status s = w->Finish();
      if (s.ok()) {
        points_ += resp.points();
        return s;
      }
      if (!Retryable(s) || attempt >= o_.max_retries || g_interrupted.load()) return s;
      double wait = backoff * std::uniform_real_distribution<double>(0.75, 1.25)(rng);
      backoff = std::min(backoff * 2, 15.0);
      ++retries_;
      std::fprintf(stderr, "\ncairn: request failed (%s: %s); retry %d of %d in %.1f s\n",
                   GrpcCodeName(s.error_code()).c_str(), s.error_message().c_str(), attempt + 1, o_.max_retries, wait);
      for (double slept = 0; slept < wait && !g_interrupted.load(); slept += 0.05) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }

  std::unique_ptr<v1::Points::Stub> stub_;
  std::function<void(grpc::ClientContext*)> prepare_;
  const OnlineOptions& o_;
  CheckpointFile* ckpt_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
  size_t busy_ = 0;
  bool closed_ = false;
  std::unordered_map<uint64_t, int> ids_;
  std::map<uint64_t, Checkpoint> done_;
  std::mutex save_mu_;     // held while the checkpoint file is written
  uint64_t saved_seq_ = 0;  // guarded by save_mu_: next_commit_ of the last save
  uint64_t next_seq_ = 0, next_commit_ = 0;
  Checkpoint committed_;
  grpc::Status error_;
  std::atomic<uint64_t> points_{0}, retries_{0};
  std::vector<std::thread> threads_;
};

}  // namespace

std::string GrpcCodeName(grpc::StatusCode c) {
  // gRPC's codes are absl's, number for number.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
}

std::string DefaultCheckpointPath(const std::string& target, const std::string& collection,
                                  const std::vector<std::string>& files) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&](const std::string& s) {
    for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  };
  mix(target);
  for (const auto& f : files) {
    std::error_code ec;
    auto abs = f == "-" ? std::filesystem::path(f) : std::filesystem::absolute(f, ec);
    mix(abs.string());
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return absl::StrCat(".cairn-ingest-", collection, "-", std::string(hex, 8), ".checkpoint");
}

absl::StatusOr<IngestStats> IngestOnline(std::shared_ptr<grpc::Channel> channel,
                                         std::function<void(grpc::ClientContext*)> prepare, SourceOptions source,
                                         const OnlineOptions& o) {
  IngestStats st;
  // One ingest per checkpoint at a time.
  auto lock = storage::FileLock::Acquire(o.checkpoint + ".lock");
  if (!lock.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("another cairn ingest is using the checkpoint ", o.checkpoint,
                                                      " (", lock.status().message(), ")"));
  }
  CheckpointFile ckpt(o.checkpoint, o.collection, source);
  Checkpoint start;
  InputSource in(source);
  if (o.resume) {
    auto c = ckpt.Load();
    if (!c.ok()) return c.status();
    start = *c;
    if (auto s = in.Seek(start.pos); !s.ok()) return s;
    in.AddSkipped(start.skipped);
    st.resumed = true;
    st.resumed_records = start.records;
    if (!o.json) {
      std::fprintf(stderr, "ingest: resuming after %llu records (file %zu, record %llu)\n",
                   static_cast<unsigned long long>(start.records), start.pos.file + 1,
                   static_cast<unsigned long long>(start.pos.items));
    }
  } else if (::access(o.checkpoint.c_str(), F_OK) == 0 && !o.json) {
    std::fprintf(stderr, "ingest: %s holds a checkpoint of an earlier, unfinished ingest; starting over "
                         "(--resume continues it instead)\n", o.checkpoint.c_str());
  }
  if (auto s = ckpt.Save(start); !s.ok()) return s;

  Progress progress(o.json, isatty(STDERR_FILENO) != 0);
  auto t0 = std::chrono::steady_clock::now();
  uint64_t records = start.records;
  std::string input_error;
  {
    Pipeline pipe(std::move(channel), std::move(prepare), o, &ckpt, start);
    // Progress shows what the server has acknowledged (reading runs ahead by
    // the requests in flight), from its own thread: a send that waits on a
    // slow server does not stop it.
    std::mutex tick_mu;
    std::condition_variable tick_cv;
    bool ticking = true;
    std::thread ticker([&] {
      std::unique_lock l(tick_mu);
      while (!tick_cv.wait_for(l, std::chrono::milliseconds(200), [&] { return !ticking; })) {
        const Checkpoint c = pipe.committed();
        progress.Update(c.records, c.bytes, c.fraction, false);
      }
    });
    auto stop_ticker = [&] {
      {
        std::lock_guard l(tick_mu);
        ticking = false;
      }
      tick_cv.notify_all();
      if (ticker.joinable()) ticker.join();
    };
    struct StopOnExit {  // before `pipe` goes, however the block is left
      std::function<void()> stop;
      ~StopOnExit() { stop(); }
    } stop_on_exit{stop_ticker};
    const size_t per_request = o.batch * std::max<size_t>(1, o.batches_per_request);
    bool more = true;
    while (more && !g_interrupted.load()) {
      Chunk c;
      size_t in_chunk = 0;
      std::unordered_set<uint64_t> message_ids;
      v1::UpsertRequest* m = nullptr;
      while (in_chunk < per_request) {
        auto rec = in.Next();
        if (!rec.ok()) {
          input_error = std::string(rec.status().message());
          more = false;
          break;
        }
        if (!rec->has_value()) {
          more = false;
          break;
        }
        const InputRecord& r = **rec;
        uint64_t h = IdHash(r);
        // A message holds an id once (the engine refuses repeats in a batch);
        // a repeat starts the next message, which is applied after it.
        if (m == nullptr || static_cast<size_t>(m->points_size()) >= o.batch || !message_ids.insert(h).second) {
          m = &c.messages.emplace_back();
          m->set_collection(o.collection);
          message_ids = {h};
        }
        auto* p = m->add_points();
        if (r.num_id) p->mutable_id()->set_num(*r.num_id);
        else p->mutable_id()->set_str(*r.str_id);
        p->mutable_vector()->Add(r.vector.begin(), r.vector.end());
        if (!r.payload_json.empty()) {
          (void)google::protobuf::util::JsonStringToMessage(r.payload_json, p->mutable_payload());
        }
        if (!r.text.empty()) p->set_text(r.text);
        c.ids.push_back(h);
        ++in_chunk;
        if (g_interrupted.load()) break;
      }
      records += in_chunk;
      st.records += in_chunk;
      // Everything read before a bad record is sent: the checkpoint then
      // stands just before it.
      c.end = in.position();
      c.records_end = records;
      c.skipped_end = in.skipped();
      c.bytes_end = in.bytes();
      c.fraction_end = in.fraction();
      if (!c.messages.empty()) {
        std::sort(c.ids.begin(), c.ids.end());
        c.ids.erase(std::unique(c.ids.begin(), c.ids.end()), c.ids.end());
        if (!pipe.Submit(std::move(c))) break;
      }
    }
    pipe.Close();
    st.points_written = pipe.points();
    st.retries = pipe.retries();
    grpc::Status err = pipe.error();
    Checkpoint done = pipe.committed();
    if (!err.ok()) {
      st.error_kind = IngestStats::ErrorKind::kServer;
      st.error = absl::StrCat(GrpcCodeName(err.error_code()), ": ", err.error_message());
    } else if (!input_error.empty()) {
      st.error_kind = IngestStats::ErrorKind::kInput;
      st.error = input_error;
    }
    st.interrupted = g_interrupted.load();
    // Done, or stopped before anything was acknowledged: a checkpoint at the
    // start is worth nothing to --resume.
    if ((st.error.empty() && !st.interrupted && !more) || done.records == 0) {
      ckpt.Remove();
      std::remove((o.checkpoint + ".lock").c_str());
    }
    st.resumed_records = start.records;
    st.records = done.records - start.records;
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.bytes = in.bytes();
  st.skipped = in.skipped();
  st.skipped_sample = in.skipped_sample();
  // Stopped early: how far reading got (a little ahead of what was
  // acknowledged), or nothing when nothing was.
  const double fraction = st.error.empty() && !st.interrupted ? 1.0
                          : start.records + st.records == 0  ? 0.0
                                                             : in.fraction();
  progress.Update(start.records + st.records, st.bytes, fraction, true);
  return st;
}

absl::StatusOr<IngestStats> IngestOffline(SourceOptions source, const OfflineOptions& o) {
  DatabaseOptions dbo;
  dbo.background_maintenance = false;
  auto db = Database::Open(o.data_dir, dbo);
  if (!db.ok()) {
    if (absl::IsFailedPrecondition(db.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          o.data_dir, " is in use (", db.status().message(),
          "); an offline ingest needs the directory to itself: stop the server, or ingest online with --target"));
    }
    return db.status();
  }
  auto coll = (*db)->GetCollection(o.collection);
  bool created = false;  // by this ingest: dropped again if it fails (all or nothing)
  if (absl::IsNotFound(coll.status()) && o.create) {
    coll = (*db)->CreateCollection(o.collection, *o.create);
    created = coll.ok();
  } else if (absl::IsNotFound(coll.status())) {
    return absl::NotFoundError(absl::StrCat("collection ", o.collection, " is not in ", o.data_dir,
                                            "; give --dim (and --metric, --index, ...) to create it"));
  }
  if (!coll.ok()) return coll.status();
  const CollectionConfig config = (*coll)->config();
  if (o.create && o.create->dimension != config.dimension) {
    return absl::InvalidArgumentError(absl::StrCat("collection ", o.collection, " has dimension ", config.dimension,
                                                   ", not ", o.create->dimension));
  }
  source.dimension = config.dimension;
  BulkLoadOptions blo;
  blo.segment_size = o.segment_size;
  auto loader = (*coll)->BeginBulkLoad(blo);
  auto drop_created = [&] {
    if (!created) return;
    coll = absl::NotFoundError("dropped");  // the handle goes before the collection
    if (auto s = (*db)->DropCollection(o.collection); !s.ok()) {
      std::fprintf(stderr, "cairn: could not drop collection %s, created by this failed ingest: %s\n",
                   o.collection.c_str(), std::string(s.message()).c_str());
    }
  };
  if (!loader.ok()) {
    drop_created();
    return loader.status();
  }

  IngestStats st;
  InputSource in(source);
  Progress progress(o.json, isatty(STDERR_FILENO) != 0);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<Point> batch;
  auto flush = [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    absl::Status s = (*loader)->Add(batch);
    batch.clear();
    return s;
  };
  while (!g_interrupted.load()) {
    auto rec = in.Next();
    if (!rec.ok()) {
      st.error_kind = IngestStats::ErrorKind::kInput;
      st.error = std::string(rec.status().message());
      break;
    }
    if (!rec->has_value()) break;
    InputRecord& r = **rec;
    Point p;
    p.id = r.num_id ? PointId(*r.num_id) : PointId(std::move(*r.str_id));
    p.vector = std::move(r.vector);
    p.payload = std::move(r.payload_json);
    p.text = std::move(r.text);
    batch.push_back(std::move(p));
    ++st.records;
    if (batch.size() >= 1000) {
      if (auto s = flush(); !s.ok()) {
        st.error_kind = IngestStats::ErrorKind::kInput;
        st.error = std::string(s.message());
        break;
      }
      progress.Update(st.records, in.bytes(), in.fraction(), false);
    }
  }
  st.interrupted = g_interrupted.load();
  if (st.error.empty() && !st.interrupted) {
    if (auto s = flush(); !s.ok()) {
      st.error_kind = IngestStats::ErrorKind::kInput;
      st.error = std::string(s.message());
    }
  }
  if (st.error.empty() && !st.interrupted) {
    if (!o.json) std::fprintf(stderr, "%singest: building the last index segments and writing storage...\n",
                              isatty(STDERR_FILENO) ? "\n" : "");
    auto f0 = std::chrono::steady_clock::now();
    auto n = (*loader)->Finish();
    st.finish_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
    if (!n.ok()) {
      st.error_kind = IngestStats::ErrorKind::kServer;
      st.error = std::string(n.status().message());
    } else {
      st.points_written = *n;
    }
  }
  loader->reset();  // abandons an unfinished load: the collection stays empty
  if (!st.error.empty() || st.interrupted) drop_created();  // or absent, if it was created for this load
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.bytes = in.bytes();
  st.skipped = in.skipped();
  st.skipped_sample = in.skipped_sample();
  if (!st.error.empty() || st.interrupted) st.records = 0;
  progress.Update(st.records, st.bytes, st.error.empty() && !st.interrupted ? 1.0 : in.fraction(), true);
  return st;
}

}  // namespace cairn::cli
