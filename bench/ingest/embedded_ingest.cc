// Embedded durable ingest of a vector file: the baseline the online path
// (cairn ingest to cairnd) is measured against in bench/ingest/run.sh.
// Reads the file with the CLI's readers, upserts batches of --batch points
// into a fresh collection (each batch durable: WAL synced), prints one JSON
// line: {"path":"embedded","records":N,"seconds":S,"records_per_second":R,"mb_per_second":M}.
//
//   embedded_ingest --data-dir DIR --index ivf_flat [--nlist N] [--batch 1000] FILE
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cairn/database.h"
#include "cli/readers.h"

int main(int argc, char** argv) {
  std::string dir, file, index = "hnsw";
  size_t batch = 1000;
  int nlist = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--data-dir") dir = next();
    else if (a == "--index") index = next();
    else if (a == "--nlist") nlist = std::atoi(next().c_str());
    else if (a == "--batch") batch = static_cast<size_t>(std::atol(next().c_str()));
    else file = a;
  }
  if (dir.empty() || file.empty() || batch == 0) {
    std::fprintf(stderr, "usage: embedded_ingest --data-dir DIR [--index TYPE] [--nlist N] [--batch N] FILE\n");
    return 1;
  }
  auto reader = cairn::cli::OpenReader(file, {});
  if (!reader.ok()) {
    std::fprintf(stderr, "%s\n", std::string(reader.status().message()).c_str());
    return 2;
  }
  auto db = cairn::Database::Open(dir);
  if (!db.ok()) {
    std::fprintf(stderr, "%s\n", std::string(db.status().message()).c_str());
    return 3;
  }
  std::vector<cairn::Point> points;
  std::shared_ptr<cairn::Collection> coll;
  uint64_t records = 0;
  auto t0 = std::chrono::steady_clock::now();
  auto flush = [&]() {
    if (points.empty()) return true;
    auto s = coll->Upsert(points);
    points.clear();
    if (!s.ok()) std::fprintf(stderr, "upsert: %s\n", std::string(s.message()).c_str());
    return s.ok();
  };
  while (true) {
    auto rec = (*reader)->Next();
    if (!rec.ok()) {
      std::fprintf(stderr, "%s\n", std::string(rec.status().message()).c_str());
      return 2;
    }
    if (!rec->has_value()) break;
    if (!coll) {
      cairn::CollectionConfig c;
      c.dimension = static_cast<uint32_t>((*rec)->vector.size());
      static const std::pair<const char*, cairn::IndexType> kTypes[] = {
          {"flat", cairn::IndexType::kFlat}, {"hnsw", cairn::IndexType::kHnsw}, {"ivf_flat", cairn::IndexType::kIvfFlat}};
      for (const auto& [name, t] : kTypes) {
        if (index == name) c.index.type = t;
      }
      if (nlist > 0) c.index.nlist = nlist;
      auto created = (*db)->CreateCollection("bench", c);
      if (!created.ok()) {
        std::fprintf(stderr, "%s\n", std::string(created.status().message()).c_str());
        return 3;
      }
      coll = *created;
    }
    cairn::Point p;
    p.id = cairn::PointId(*(*rec)->num_id);
    p.vector = std::move((*rec)->vector);
    points.push_back(std::move(p));
    ++records;
    if (points.size() >= batch && !flush()) return 3;
  }
  if (!flush()) return 3;
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"path\":\"embedded\",\"records\":%llu,\"seconds\":%.3f,\"records_per_second\":%.1f,\"mb_per_second\":%.2f}\n",
              static_cast<unsigned long long>(records), secs, records / secs, (*reader)->bytes() / 1e6 / secs);
  return 0;
}
