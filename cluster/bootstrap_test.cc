// Formation decisions (Decide): a cluster forms only when every seed answers
// with an empty disk and the same seeds; a node that took part adopts what
// the others formed; anything else waits or must join.
#include <stdlib.h>

#include <filesystem>

#include "cluster/bootstrap.h"
#include "gtest/gtest.h"

namespace cairn::cluster {
namespace {

const std::vector<std::string> kSeeds = {"a:1", "b:1", "c:1", "d:1"};

SeedAnswer Empty(const std::string& address, uint64_t id, std::vector<std::string> seeds = kSeeds) {
  SeedAnswer a;
  a.address = address;
  pb::HelloResponse r;
  r.set_node_id(id);
  r.set_name(address);
  for (const auto& s : seeds) r.add_seeds(s);
  a.response = r;
  return a;
}

TEST(DecideTest, EverySeedEmptyFormsTheSameClusterEverywhere) {
  std::vector<SeedAnswer> answers = {Empty("a:1", 11), Empty("b:1", 22), Empty("c:1", 33), Empty("d:1", 44)};
  Decision first = Decide({22, "b:1"}, kSeeds, answers);
  Decision other = Decide({44, "d:1"}, kSeeds, answers);
  ASSERT_EQ(first.kind, Decision::Kind::kForm) << first.why;
  ASSERT_EQ(other.kind, Decision::Kind::kForm) << other.why;
  EXPECT_EQ(first.membership.cluster_id, other.membership.cluster_id);
  EXPECT_EQ(first.membership.cluster_id, ClusterIdOf({44, 33, 22, 11}));  // order of ids does not matter
  EXPECT_EQ(first.membership.initial_voters, (std::vector<uint64_t>{11, 22, 33}));  // the first three seeds
  ASSERT_EQ(first.membership.seeds.size(), 4u);
  EXPECT_EQ(first.membership.seeds[3].address, "d:1");
}

TEST(DecideTest, AnySeedMissingOrDisagreeingWaits) {
  std::vector<SeedAnswer> answers = {Empty("a:1", 11), Empty("b:1", 22), Empty("c:1", 33), SeedAnswer{"d:1", {}, "down"}};
  Decision d = Decide({11, "a:1"}, kSeeds, answers);
  EXPECT_EQ(d.kind, Decision::Kind::kWait);
  EXPECT_NE(d.why.find("d:1 (down)"), std::string::npos) << d.why;
  answers[3] = Empty("d:1", 44, {"a:1", "b:1", "c:1"});  // started with other seeds
  d = Decide({11, "a:1"}, kSeeds, answers);
  EXPECT_EQ(d.kind, Decision::Kind::kWait);
  EXPECT_NE(d.why.find("other --seeds"), std::string::npos) << d.why;
  answers[3] = Empty("d:1", 33);  // two addresses, one node
  d = Decide({11, "a:1"}, kSeeds, answers);
  EXPECT_EQ(d.kind, Decision::Kind::kWait);
  answers[3] = Empty("d:1", 44);
  d = Decide({99, "x:1"}, kSeeds, answers);  // not a seed: never forms
  EXPECT_EQ(d.kind, Decision::Kind::kWait);
}

TEST(DecideTest, AClusterThatExistsIsAdoptedByItsSeedsAndJoinedByOthers) {
  std::vector<SeedAnswer> answers = {Empty("a:1", 11), Empty("b:1", 22), Empty("c:1", 33), Empty("d:1", 44)};
  pb::HelloResponse& formed = *answers[0].response;
  formed.set_cluster_id("c-1");
  for (uint64_t v : {11, 22, 33}) formed.add_initial_voters(v);
  for (uint64_t n : {11, 22, 33, 44}) {
    auto* m = formed.add_members();
    m->set_node_id(n);
    m->set_peer_address("x");
  }
  // A learner seed (44) that had not written its record yet adopts it.
  Decision d = Decide({44, "d:1"}, kSeeds, answers);
  EXPECT_EQ(d.kind, Decision::Kind::kAdopt);
  EXPECT_EQ(d.membership.cluster_id, "c-1");
  // A wiped seed comes back with a new id: it must join, never form.
  d = Decide({45, "d:1"}, kSeeds, answers);
  EXPECT_EQ(d.kind, Decision::Kind::kJoin);
  EXPECT_NE(d.why.find("c-1"), std::string::npos) << d.why;
}

TEST(IdentityTest, MintedOnceAndBoundToItsName) {
  std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "cairn-id-XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  auto a = LoadOrCreateIdentity(tmpl + "/n", "cairn-0");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_NE(a->id, 0u);
  auto again = LoadOrCreateIdentity(tmpl + "/n", "cairn-0");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, a->id);
  auto other = LoadOrCreateIdentity(tmpl + "/n", "cairn-1");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  auto b = LoadOrCreateIdentity(tmpl + "/m", "cairn-0");
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->id, a->id);  // a new disk, a new id
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace cairn::cluster
