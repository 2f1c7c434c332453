// cairn: the command-line tool. Talks to a running cairnd over gRPC.
// `cairn --help` and `cairn COMMAND --help` explain every command.
//
// Exit status: 0 ok, 1 usage error, 2 input error (a bad file or record),
// 3 server error (unreachable, or it refused the request).
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cairn/v1/collections.grpc.pb.h"
#include "cairn/v1/points.grpc.pb.h"
#include "cairn/v1/search.grpc.pb.h"
#include "cairn/v1/server.grpc.pb.h"
#include "cli/readers.h"
#include <google/protobuf/util/json_util.h>

namespace {

using Json = nlohmann::json;
namespace v1 = cairn::v1;

constexpr int kOk = 0, kUsage = 1, kInput = 2, kServer = 3;

const char* kUsageText =
    "Usage: cairn [connection flags] COMMAND [args]\n"
    "\n"
    "Commands:\n"
    "  collection create NAME --dim N [--metric l2|ip|cosine] [--index TYPE]\n"
    "                    [--payload-index FIELD:TYPE]... [--shards N]\n"
    "  collection list | info NAME | drop NAME\n"
    "  ingest --collection NAME [--format auto|fvecs|ivecs|bvecs|npy|jsonl] [--batch N]\n"
    "         [--skip-bad] [--json] FILE...\n"
    "  search --collection NAME --vector 0.1,0.2,... [--k N] [--ef N] [--filter JSON] [--json]\n"
    "  info\n"
    "\n"
    "Connection flags (or environment variables):\n"
    "  --target HOST:PORT   cairnd's gRPC address (CAIRN_TARGET; default 127.0.0.1:7600)\n"
    "  --api-key KEY        API key (CAIRN_API_KEY)\n"
    "  --tls-ca FILE        verify cairnd's TLS certificate with this CA (CAIRN_TLS_CA)\n"
    "\n"
    "Examples:\n"
    "  cairn collection create docs --dim 384 --metric cosine --payload-index lang:keyword\n"
    "  cairn ingest --collection docs chunks.jsonl.gz\n"
    "  cairn search --collection docs --vector 0.1,0.3,... --filter '{\"must\":[{\"key\":\"lang\",\"match\":{\"value\":\"en\"}}]}'\n"
    "\n"
    "Exit status: 0 ok, 1 usage error, 2 input error, 3 server error.\n"
    "`cairn COMMAND --help` explains each command.\n";

const std::map<std::string, std::string> kCommandHelp = {
    {"collection",
     "Usage: cairn collection create NAME --dim N [--metric l2|ip|cosine] [--index TYPE]\n"
     "                        [--payload-index FIELD:TYPE]... [--shards N]\n"
     "       cairn collection list\n"
     "       cairn collection info NAME\n"
     "       cairn collection drop NAME\n"
     "\n"
     "TYPE of --index: hnsw (default), flat, ivf_flat, ivf_pq, ivf_sq8, hnsw_sq.\n"
     "TYPE of --payload-index: keyword, integer, float, bool (repeat the flag per field).\n"
     "\n"
     "Example:\n"
     "  cairn collection create docs --dim 384 --metric cosine --payload-index lang:keyword\n"},
    {"ingest",
     "Usage: cairn ingest --collection NAME [--format auto|fvecs|ivecs|bvecs|npy|jsonl] [--batch N]\n"
     "                    [--skip-bad] [--json] FILE...\n"
     "\n"
     "Streams points to cairnd in batches (default 1000), durable as each batch is acknowledged.\n"
     "Formats: fvecs, ivecs, bvecs, .npy of float32/float16/uint8 rows (ids are record\n"
     "positions, from 0), and JSON Lines with\n"
     "{\"id\": 7 or \"doc-7\", \"vector\": [...], \"payload\": {...}, \"text\": \"...\"}; any of them\n"
     "gzip-compressed (.gz). --format auto (default) goes by the file name. An id repeated in\n"
     "the input is written again: the last one wins.\n"
     "Progress goes to stderr (a line that updates on a terminal, periodic lines otherwise);\n"
     "--json prints a summary {records_sent, records_written, seconds, records_per_second, errors}.\n"
     "A bad record stops the ingest with exit status 2, naming the file and record; full batches\n"
     "sent before it are written, nothing after them. --skip-bad skips bad records instead\n"
     "(a line that is not JSON, a wrong dimension, NaN) and reports how many, with examples;\n"
     "a truncated or corrupt file still stops the ingest.\n"
     "\n"
     "Example:\n"
     "  cairn ingest --collection docs chunks.jsonl.gz\n"},
    {"search",
     "Usage: cairn search --collection NAME --vector X1,X2,... [--k N] [--ef N] [--filter JSON] [--json]\n"
     "\n"
     "Prints the k nearest points (default 10) with score and payload; --json prints the\n"
     "response as JSON. --filter takes the API's filter JSON.\n"
     "\n"
     "Example:\n"
     "  cairn search --collection docs --vector 0.1,0.9,0.1,0.1 --k 3 \\\n"
     "    --filter '{\"must\":[{\"key\":\"lang\",\"match\":{\"value\":\"en\"}}]}'\n"},
    {"info",
     "Usage: cairn info\n\nPrints the server's version, format, SIMD level, uptime and collections.\n"
     "\nExample:\n  CAIRN_TARGET=10.0.0.5:7600 CAIRN_API_KEY=... cairn info\n"},
};

struct Conn {
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;
  void Prepare(grpc::ClientContext* ctx) const {
    if (!api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key);
  }
};

int Usage(const std::string& why) {
  std::fprintf(stderr, "cairn: %s\n\n%s", why.c_str(), kUsageText);
  return kUsage;
}

int ServerError(const grpc::Status& s) {
  std::fprintf(stderr, "cairn: server: %s: %s\n", s.error_code() == grpc::StatusCode::UNAVAILABLE
                                                       ? "UNAVAILABLE (is cairnd running at the target?)"
                                                       : std::to_string(s.error_code()).c_str(),
               s.error_message().c_str());
  return kServer;
}

// Pulls "--name value" pairs and bare arguments out of args.
struct Args {
  std::map<std::string, std::vector<std::string>> flags;
  std::vector<std::string> rest;
  std::set<std::string> switches;
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second.back();
  }
  bool Has(const std::string& name) const { return flags.count(name) || switches.count(name); }
};

bool Parse(const std::vector<std::string>& in, const std::set<std::string>& switches, Args* out,
           std::string* error) {
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& a = in[i];
    if (a.rfind("--", 0) == 0) {
      if (switches.count(a)) {
        out->switches.insert(a);
        continue;
      }
      if (i + 1 >= in.size()) {
        *error = a + " needs a value";
        return false;
      }
      out->flags[a].push_back(in[++i]);
    } else {
      out->rest.push_back(a);
    }
  }
  return true;
}

int CollectionCmd(const Conn& c, const Args& a) {
  if (a.rest.empty()) return Usage("collection: create, list, info or drop?");
  auto stub = v1::Collections::NewStub(c.channel);
  const std::string& sub = a.rest[0];
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  if (sub == "list") {
    v1::ListCollectionsResponse resp;
    auto s = stub->List(&ctx, v1::ListCollectionsRequest(), &resp);
    if (!s.ok()) return ServerError(s);
    for (const auto& n : resp.names()) std::printf("%s\n", n.c_str());
    return kOk;
  }
  if (a.rest.size() < 2) return Usage("collection " + sub + ": which collection?");
  const std::string& name = a.rest[1];
  if (sub == "info") {
    v1::GetCollectionRequest req;
    req.set_name(name);
    v1::CollectionInfo info;
    auto s = stub->Get(&ctx, req, &info);
    if (!s.ok()) return ServerError(s);
    std::string json;
    google::protobuf::util::JsonPrintOptions o;
    o.add_whitespace = true;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(info, &json, o);
    std::printf("%s", json.c_str());
    return kOk;
  }
  if (sub == "drop") {
    v1::DeleteCollectionRequest req;
    req.set_name(name);
    v1::DeleteCollectionResponse resp;
    auto s = stub->Delete(&ctx, req, &resp);
    if (!s.ok()) return ServerError(s);
    std::printf("dropped %s\n", name.c_str());
    return kOk;
  }
  if (sub != "create") return Usage("collection: unknown subcommand " + sub);
  v1::CreateCollectionRequest req;
  req.set_name(name);
  auto* cfg = req.mutable_config();
  int dim = std::atoi(a.Get("--dim", "0").c_str());
  if (dim <= 0) return Usage("collection create: --dim N is required");
  cfg->set_dimension(static_cast<uint32_t>(dim));
  const std::string metric = a.Get("--metric", "l2");
  if (metric == "l2") cfg->set_metric(v1::METRIC_L2);
  else if (metric == "ip") cfg->set_metric(v1::METRIC_INNER_PRODUCT);
  else if (metric == "cosine") cfg->set_metric(v1::METRIC_COSINE);
  else return Usage("--metric is l2, ip or cosine");
  static const std::map<std::string, v1::IndexType> kIndex = {
      {"flat", v1::INDEX_TYPE_FLAT},       {"hnsw", v1::INDEX_TYPE_HNSW},       {"ivf_flat", v1::INDEX_TYPE_IVF_FLAT},
      {"ivf_pq", v1::INDEX_TYPE_IVF_PQ},   {"ivf_sq8", v1::INDEX_TYPE_IVF_SQ8}, {"hnsw_sq", v1::INDEX_TYPE_HNSW_SQ}};
  auto ix = kIndex.find(a.Get("--index", "hnsw"));
  if (ix == kIndex.end()) return Usage("--index is flat, hnsw, ivf_flat, ivf_pq, ivf_sq8 or hnsw_sq");
  cfg->mutable_index()->set_type(ix->second);
  static const std::map<std::string, v1::PayloadType> kTypes = {{"keyword", v1::PAYLOAD_TYPE_KEYWORD},
                                                                {"integer", v1::PAYLOAD_TYPE_INTEGER},
                                                                {"float", v1::PAYLOAD_TYPE_FLOAT},
                                                                {"bool", v1::PAYLOAD_TYPE_BOOL}};
  if (auto it = a.flags.find("--payload-index"); it != a.flags.end()) {
    for (const auto& spec : it->second) {
      size_t colon = spec.rfind(':');
      auto t = colon == std::string::npos ? kTypes.end() : kTypes.find(spec.substr(colon + 1));
      if (t == kTypes.end()) return Usage("--payload-index is FIELD:TYPE with TYPE keyword, integer, float or bool");
      auto* p = cfg->add_payload_indexes();
      p->set_field(spec.substr(0, colon));
      p->set_type(t->second);
    }
  }
  cfg->set_num_shards(static_cast<uint32_t>(std::atoi(a.Get("--shards", "1").c_str())));
  v1::CollectionInfo info;
  auto s = stub->Create(&ctx, req, &info);
  if (!s.ok()) return ServerError(s);
  std::printf("created %s (dimension %u)\n", name.c_str(), info.config().dimension());
  return kOk;
}

int IngestCmd(const Conn& c, const Args& a) {
  const std::string coll = a.Get("--collection");
  if (coll.empty()) return Usage("ingest: --collection NAME is required");
  if (a.rest.empty()) return Usage("ingest: which files?");
  const size_t batch_size = static_cast<size_t>(std::max(1, std::atoi(a.Get("--batch", "1000").c_str())));
  const bool json = a.Has("--json");
  const bool tty = isatty(STDERR_FILENO) && !json;
  // The collection's dimension, to name the file and record of a bad vector.
  uint32_t dim = 0;
  {
    grpc::ClientContext ictx;
    c.Prepare(&ictx);
    v1::GetCollectionRequest req;
    req.set_name(coll);
    v1::CollectionInfo info;
    auto s = v1::Collections::NewStub(c.channel)->Get(&ictx, req, &info);
    if (!s.ok()) return ServerError(s);
    dim = info.config().dimension();
  }
  auto stub = v1::Points::NewStub(c.channel);
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  v1::UpsertResponse resp;
  auto writer = stub->UpsertStream(&ctx, &resp);
  auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  uint64_t records = 0, bytes = 0, skipped = 0;
  std::vector<std::string> skipped_sample;
  const bool skip_bad = a.Has("--skip-bad");
  auto skip = [&](const std::string& why) {
    ++skipped;
    if (skipped_sample.size() < 5) skipped_sample.push_back(why);
  };
  std::string input_error;
  auto report = [&](bool final) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (json) return;
    if (tty) {
      std::fprintf(stderr, "\r%llu records, %.1f MB, %.0f records/s%s", static_cast<unsigned long long>(records),
                   bytes / 1e6, secs > 0 ? records / secs : 0.0, final ? "\n" : "");
    } else {
      std::fprintf(stderr, "ingest: %llu records, %.1f MB, %.0f records/s\n",
                   static_cast<unsigned long long>(records), bytes / 1e6, secs > 0 ? records / secs : 0.0);
    }
  };
  v1::UpsertRequest req;
  req.set_collection(coll);
  bool stream_ok = true;
  auto flush = [&]() {
    if (req.points_size() == 0) return;
    if (!writer->Write(req)) stream_ok = false;
    req.clear_points();
  };
  for (const auto& path : a.rest) {
    auto reader = cairn::cli::OpenReader(path, a.Get("--format", "auto"));
    if (!reader.ok()) {
      input_error = std::string(reader.status().message());
      break;
    }
    uint64_t file_bytes_before = bytes;
    while (stream_ok) {
      auto rec = (*reader)->Next();
      if (!rec.ok()) {
        if (skip_bad && absl::IsInvalidArgument(rec.status())) {
          skip(std::string(rec.status().message()));
          continue;
        }
        input_error = std::string(rec.status().message());
        break;
      }
      if (!rec->has_value()) break;
      auto& r = **rec;
      if (r.vector.size() != dim) {
        std::string why = absl::StrCat(path, ": record ", r.number, ": vector has dimension ", r.vector.size(),
                                       "; collection ", coll, " has ", dim);
        if (skip_bad) {
          skip(why);
          continue;
        }
        input_error = why;
        break;
      }
      auto* p = req.add_points();
      if (r.num_id) p->mutable_id()->set_num(*r.num_id);
      else p->mutable_id()->set_str(*r.str_id);
      p->mutable_vector()->Add(r.vector.begin(), r.vector.end());
      if (!r.payload_json.empty()) {
        (void)google::protobuf::util::JsonStringToMessage(r.payload_json, p->mutable_payload());
      }
      p->set_text(r.text);
      ++records;
      bytes = file_bytes_before + (*reader)->bytes();
      if (static_cast<size_t>(req.points_size()) >= batch_size) flush();
      auto now = std::chrono::steady_clock::now();
      if (now - last_report > std::chrono::milliseconds(tty ? 200 : 5000)) {
        report(false);
        last_report = now;
      }
    }
    if (!input_error.empty() || !stream_ok) break;
  }
  if (input_error.empty()) flush();
  writer->WritesDone();
  // Full batches sent before a bad record are applied; the partial batch
  // holding the records just before it is not sent.
  grpc::Status s = writer->Finish();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report(true);
  if (json) {
    Json out{{"records_sent", records},
             {"records_written", resp.points()},
             {"seconds", secs},
             {"records_per_second", secs > 0 ? resp.points() / secs : 0.0},
             {"errors", input_error.empty() && s.ok() ? 0 : 1},
             {"skipped", skipped},
             {"skipped_sample", skipped_sample}};
    if (!input_error.empty()) out["error"] = input_error;
    else if (!s.ok()) out["error"] = s.error_message();
    std::printf("%s\n", out.dump().c_str());
  }
  if (!input_error.empty()) {
    std::fprintf(stderr, "cairn: %s\ncairn: stopped; %llu points from earlier full batches were written, nothing after them\n",
                 input_error.c_str(), static_cast<unsigned long long>(resp.points()));
    return kInput;
  }
  if (!s.ok()) return ServerError(s);
  if (!json) std::fprintf(stderr, "ingest: wrote %llu points in %.2f s\n", static_cast<unsigned long long>(resp.points()), secs);
  if (skipped > 0 && !json) {
    std::fprintf(stderr, "ingest: skipped %llu bad records (--skip-bad), for example:\n",
                 static_cast<unsigned long long>(skipped));
    for (const auto& w : skipped_sample) std::fprintf(stderr, "  %s\n", w.c_str());
  }
  return kOk;
}

int SearchCmd(const Conn& c, const Args& a) {
  const std::string coll = a.Get("--collection");
  if (coll.empty()) return Usage("search: --collection NAME is required");
  v1::SearchRequest req;
  req.set_collection(coll);
  const std::string vec = a.Get("--vector");
  if (vec.empty()) return Usage("search: --vector 0.1,0.2,... is required");
  for (absl::string_view part : absl::StrSplit(vec, ',')) {
    char* end = nullptr;
    std::string p(part);
    float f = std::strtof(p.c_str(), &end);
    if (p.empty() || *end != '\0') {
      std::fprintf(stderr, "cairn: --vector: \"%s\" is not a number\n", p.c_str());
      return kInput;
    }
    req.add_vector(f);
  }
  auto* params = req.mutable_params();
  params->set_k(static_cast<uint32_t>(std::atoi(a.Get("--k", "10").c_str())));
  params->set_ef(static_cast<uint32_t>(std::atoi(a.Get("--ef", "0").c_str())));
  params->set_with_payload(true);
  if (std::string f = a.Get("--filter"); !f.empty()) {
    google::protobuf::util::JsonParseOptions o;
    auto st = google::protobuf::util::JsonStringToMessage(f, params->mutable_filter(), o);
    if (!st.ok()) {
      std::fprintf(stderr, "cairn: --filter: %s\n", std::string(st.message()).c_str());
      return kInput;
    }
  }
  auto stub = v1::Search::NewStub(c.channel);
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  v1::SearchResponse resp;
  auto s = stub->Search(&ctx, req, &resp);
  if (!s.ok()) return ServerError(s);
  if (a.Has("--json")) {
    std::string out;
    google::protobuf::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(resp, &out, o);
    std::printf("%s\n", out.c_str());
    return kOk;
  }
  std::printf("%-24s %-12s %s\n", "id", "score", "payload");
  for (const auto& h : resp.hits()) {
    std::string id = h.id().has_str() ? h.id().str() : std::to_string(h.id().num());
    std::string payload;
    (void)google::protobuf::util::MessageToJsonString(h.payload(), &payload);
    std::printf("%-24s %-12.6g %s\n", id.c_str(), h.score(), payload.c_str());
  }
  return kOk;
}

int InfoCmd(const Conn& c) {
  auto stub = v1::Server::NewStub(c.channel);
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  v1::ServerInfo info;
  auto s = stub->Info(&ctx, v1::ServerInfoRequest(), &info);
  if (!s.ok()) return ServerError(s);
  std::printf("version %s, format %u, simd %s, up %llu s, collections: %s\n", info.version().c_str(),
              info.format_version(), info.simd().c_str(), static_cast<unsigned long long>(info.uptime_seconds()),
              info.collections().empty() ? "(none)"
                                         : absl::StrJoin(info.collections(), ", ").c_str());
  return kOk;
}

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  for (const auto& a : all) {
    if (a == "--help" || a == "-h") {
      // The command's own help when a command is named, else the overview.
      for (const auto& w : all) {
        if (auto it = kCommandHelp.find(w); it != kCommandHelp.end()) {
          std::printf("%s", it->second.c_str());
          return kOk;
        }
      }
      std::printf("%s", kUsageText);
      return kOk;
    }
  }
  Args args;
  std::string error;
  if (!Parse(all, {"--json", "--skip-bad"}, &args, &error)) return Usage(error);
  if (args.rest.empty()) return Usage("no command");
  std::string target = args.Get("--target", Env("CAIRN_TARGET", "127.0.0.1:7600"));
  Conn conn;
  conn.api_key = args.Get("--api-key", Env("CAIRN_API_KEY", ""));
  std::string ca = args.Get("--tls-ca", Env("CAIRN_TLS_CA", ""));
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!ca.empty()) {
    std::ifstream f(ca);
    if (!f) {
      std::fprintf(stderr, "cairn: cannot read %s\n", ca.c_str());
      return kInput;
    }
    grpc::SslCredentialsOptions o;
    o.pem_root_certs.assign(std::istreambuf_iterator<char>(f), {});
    creds = grpc::SslCredentials(o);
  }
  grpc::ChannelArguments ch_args;
  ch_args.SetMaxSendMessageSize(64 << 20);
  ch_args.SetMaxReceiveMessageSize(64 << 20);
  conn.channel = grpc::CreateCustomChannel(target, creds, ch_args);
  std::string cmd = args.rest[0];
  args.rest.erase(args.rest.begin());
  if (cmd == "collection") return CollectionCmd(conn, args);
  if (cmd == "ingest") return IngestCmd(conn, args);
  if (cmd == "search") return SearchCmd(conn, args);
  if (cmd == "info") return InfoCmd(conn);
  return Usage("unknown command " + cmd);
}
