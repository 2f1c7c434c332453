#include <cstdio>
#include <string>
#include <vector>

#include "cairn/database.h"

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "./example-data";
  auto db = cairn::Database::Open(dir);
  if (!db.ok()) {
    std::fprintf(stderr, "%s\n", db.status().ToString().c_str());
    return 1;
  }

  // A collection of 4-dimensional embeddings compared by cosine similarity,
  // with an index on the "lang" payload field.
  cairn::CollectionConfig config;
  config.dimension = 4;
  config.metric = cairn::Metric::kCosine;
  config.payload_indexes = {{"lang", cairn::PayloadType::kKeyword}};
  auto docs = (*db)->GetCollection("docs");
  if (!docs.ok()) docs = (*db)->CreateCollection("docs", config);
  if (!docs.ok()) return 1;

  // Upserts are atomic and durable when they return.
  std::vector<cairn::Point> points = {
      {1, {0.1f, 0.9f, 0.0f, 0.2f}, R"({"lang": "en", "source": "faq"})", "How do I reset my password?"},
      {2, {0.8f, 0.1f, 0.3f, 0.0f}, R"({"lang": "de"})", "Wie setze ich mein Passwort zurueck?"},
      {"chunk-7", {0.2f, 0.8f, 0.1f, 0.1f}, R"({"lang": "en"})", "Passwords need 12 characters."},
  };
  if (auto s = (*docs)->Upsert(points); !s.ok()) return 1;

  // The two nearest English chunks to a query embedding.
  auto english = cairn::Filter::FromJson(R"({"must": [{"key": "lang", "match": {"value": "en"}}]})");
  cairn::SearchParams params;
  params.k = 2;
  params.filter = &*english;
  auto hits = (*docs)->Search(std::vector<float>{0.1f, 0.9f, 0.1f, 0.1f}, params);
  if (!hits.ok()) return 1;
  for (const auto& hit : *hits) {
    std::printf("%s %.3f %s\n", hit.id.ToString().c_str(), hit.score, hit.text.c_str());
  }
  return 0;
}
