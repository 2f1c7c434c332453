// Unit tests of the Raft core, each naming the section of the Raft paper
// (Ongaro & Ousterhout 2014) or of Ongaro's dissertation it checks.
#include "replication/raft.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "replication/test_network.h"

namespace cairn::raft {
namespace {

Message VoteResp(uint64_t from, uint64_t to, uint64_t term) {
  Message m;
  m.type = MessageType::kVoteResp;
  m.from = from;
  m.to = to;
  m.term = term;
  return m;
}

Message AppResp(uint64_t from, uint64_t to, uint64_t term, uint64_t index) {
  Message m;
  m.type = MessageType::kAppResp;
  m.from = from;
  m.to = to;
  m.term = term;
  m.index = index;
  return m;
}

TEST(RaftTest, ConfigIsValidated) {
  MemoryStorage s;
  Config c;
  EXPECT_EQ(Raft::Create(c).status().code(), absl::StatusCode::kInvalidArgument);  // no id
  c.id = 1;
  EXPECT_EQ(Raft::Create(c).status().code(), absl::StatusCode::kInvalidArgument);  // no storage
  c.storage = &s;
  c.election_tick = 1;
  EXPECT_EQ(Raft::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.election_tick = 10;
  c.lease_reads = true;
  c.check_quorum = false;
  EXPECT_EQ(Raft::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.check_quorum = true;
  EXPECT_TRUE(Raft::Create(c).ok());
}

TEST(RaftTest, ConfChangeRoundTripsAndRejectsGarbage) {
  ConfChange cc{ConfChange::Type::kAddLearner, 0x0102030405060708ull};
  auto back = ConfChange::Decode(cc.Encode());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->type, cc.type);
  EXPECT_EQ(back->node, cc.node);
  EXPECT_EQ(ConfChange::Decode("xyz").status().code(), absl::StatusCode::kDataLoss);
  std::string bad = cc.Encode();
  bad[0] = 9;
  EXPECT_EQ(ConfChange::Decode(bad).status().code(), absl::StatusCode::kDataLoss);
}

TEST(RaftTest, BootstrapNeedsAnEmptyLogAndVoters) {
  MemoryStorage s;
  EXPECT_EQ(Bootstrap(&s, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Bootstrap(&s, {0, 1}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Bootstrap(&s, {3, 1, 2, 2}).ok());
  EXPECT_EQ(s.InitialConfState().voters, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(Bootstrap(&s, {1}).code(), absl::StatusCode::kFailedPrecondition);
}

// §5.2: a candidate with a majority of votes becomes leader; the others follow.
TEST(RaftTest, Section5_2_ElectionWithAMajority) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_EQ(net.raft(1).term(), 2u);  // bootstrap is term 1
  for (uint64_t id : {2, 3}) {
    EXPECT_EQ(net.raft(id).role(), Role::kFollower);
    EXPECT_EQ(net.raft(id).leader(), 1u);
    EXPECT_EQ(net.raft(id).term(), 2u);
  }
}

// §5.2: without a majority there is no leader; the candidate keeps trying.
TEST(RaftTest, Section5_2_NoLeaderWithoutAMajority) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.pre_vote = false; });
  net.Isolate(1);
  net.Elect(1);
  EXPECT_EQ(net.raft(1).role(), Role::kCandidate);
  const uint64_t term = net.raft(1).term();
  net.Tick(1, 25);  // at least one more randomized timeout
  EXPECT_EQ(net.raft(1).role(), Role::kCandidate);
  EXPECT_GT(net.raft(1).term(), term);
}

// Timeouts are drawn from [election_tick, 2 * election_tick).
TEST(RaftTest, Section5_2_RandomizedElectionTimeout) {
  for (uint64_t draw : {0, 9}) {
    TestNetwork net({1}, [draw](Config& c) { c.rand = [draw](uint64_t) { return draw; }; });
    // Bootstrap term is 1; the node campaigns after exactly 10 + draw ticks.
    net.Tick(1, static_cast<int>(10 + draw) - 1);
    EXPECT_EQ(net.raft(1).role(), Role::kFollower) << draw;
    net.Tick(1, 1);
    EXPECT_EQ(net.raft(1).role(), Role::kLeader) << draw;
  }
}

// A single voter elects itself and commits on its own.
TEST(RaftTest, SingleVoterCommitsAtOnce) {
  TestNetwork net({1});
  net.Elect(1);
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  EXPECT_EQ(net.applied(1), (std::vector<std::string>{"a"}));
}

// §5.3: entries the leader appends are replicated, committed and applied everywhere in order.
TEST(RaftTest, Section5_3_LogReplication) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  for (std::string s : {"a", "b", "c"}) ASSERT_TRUE(net.raft(1).Propose(s).ok());
  net.Settle();
  for (uint64_t id : {1, 2, 3}) {
    EXPECT_EQ(net.applied(id), (std::vector<std::string>{"a", "b", "c"})) << id;
    EXPECT_EQ(net.raft(id).log().committed(), net.raft(1).log().LastIndex());
  }
}

// Followers forward proposals to the leader, unless told not to.
TEST(RaftTest, ProposalForwarding) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(2).Propose("via-2").ok());
  net.Settle();
  EXPECT_EQ(net.applied(3), (std::vector<std::string>{"via-2"}));

  TestNetwork strict({1, 2, 3}, [](Config& c) { c.disable_proposal_forwarding = true; });
  strict.Elect(1);
  EXPECT_EQ(strict.raft(2).Propose("x").code(), absl::StatusCode::kUnavailable);
  TestNetwork leaderless({1, 2, 3});
  EXPECT_EQ(leaderless.raft(2).Propose("x").code(), absl::StatusCode::kUnavailable);
}

// §5.3: a follower with a conflicting suffix (from a deposed leader) has it
// replaced by the leader's entries.
TEST(RaftTest, Section5_3_ConflictingSuffixIsReplaced) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.check_quorum = false; });
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("committed").ok());
  net.Settle();
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).Propose("lost-1").ok());
  ASSERT_TRUE(net.raft(1).Propose("lost-2").ok());
  net.Settle();
  net.Elect(2);
  ASSERT_EQ(net.raft(2).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(2).Propose("kept").ok());
  net.Settle();
  net.Heal();
  net.TickAll(3);  // heartbeats reach node 1: it steps down and catches up
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.applied(1), (std::vector<std::string>{"committed", "kept"}));
  EXPECT_EQ(net.raft(1).log().LastIndex(), net.raft(2).log().LastIndex());
}

// §5.4.1: a node does not vote for a candidate whose log is behind its own.
TEST(RaftTest, Section5_4_1_ElectionRestriction) {
  // Without check-quorum, node 2 judges node 3's (pre-)vote by the logs alone.
  TestNetwork net({1, 2, 3}, [](Config& c) { c.check_quorum = false; });
  net.Elect(1);
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());  // on 1 and 2, not 3
  net.Settle();
  net.Heal();
  net.Isolate(1);
  net.Elect(3);  // 2 refuses: 3's log is behind
  EXPECT_NE(net.raft(3).role(), Role::kLeader);
  net.Elect(2);
  EXPECT_EQ(net.raft(2).role(), Role::kLeader);
}

// §5.4.2 / Figure 8: a leader never commits an entry of an earlier term by
// counting replicas; it commits it along with an entry of its own term.
TEST(RaftTest, Section5_4_2_OldTermEntriesCommitOnlyWithACurrentTermEntry) {
  // Node 1's log: the bootstrap entry, then "old" at index 2 from term 2,
  // never committed; its current term is 3.
  MemoryStorage s;
  ASSERT_TRUE(Bootstrap(&s, {1, 2, 3}).ok());
  ASSERT_TRUE(s.Append({Entry{.term = 2, .index = 2, .data = "old"}}).ok());
  ASSERT_TRUE(s.SetHardState(HardState{.term = 3, .vote = kNone, .commit = 1}).ok());
  Config c;
  c.id = 1;
  c.storage = &s;
  c.pre_vote = false;
  auto r = Raft::Create(c);
  ASSERT_TRUE(r.ok());
  Raft& raft = **r;
  raft.Campaign();
  ASSERT_TRUE(raft.Step(VoteResp(2, 1, 4)).ok());
  ASSERT_EQ(raft.role(), Role::kLeader);
  ASSERT_EQ(raft.log().LastIndex(), 3u);  // its no-op of term 4
  // Node 2 acknowledges "old" only: a majority holds it, yet it is not committed.
  ASSERT_TRUE(raft.Step(AppResp(2, 1, 4, 2)).ok());
  EXPECT_EQ(raft.log().committed(), 1u);
  // Node 2 acknowledges the no-op: both commit.
  ASSERT_TRUE(raft.Step(AppResp(2, 1, 4, 3)).ok());
  EXPECT_EQ(raft.log().committed(), 3u);
}

// Dissertation §9.6: with pre-vote, a partitioned node does not raise its
// term, so on rejoining it does not depose the leader.
TEST(RaftTest, PreVoteKeepsARejoiningNodeFromDisruptingTheLeader) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  const uint64_t term = net.raft(1).term();
  net.Isolate(3);
  net.Tick(3, 100);
  EXPECT_EQ(net.raft(3).term(), term);
  EXPECT_EQ(net.raft(3).role(), Role::kPreCandidate);
  net.Heal();
  net.TickAll(5);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.raft(3).leader(), 1u);
}

// Without pre-vote the same node does raise its term and depose the leader.
TEST(RaftTest, WithoutPreVoteARejoiningNodeRaisesTheTerm) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.pre_vote = false; c.check_quorum = false; });
  net.Elect(1);
  const uint64_t term = net.raft(1).term();
  net.Isolate(3);
  net.Tick(3, 100);
  EXPECT_GT(net.raft(3).term(), term);
  net.Heal();
  net.TickAll(25);  // node 3's next election timeout, which deposes node 1
  EXPECT_GT(net.raft(1).term(), term);
}

// Dissertation §6.2: check-quorum: a leader cut off from its majority steps down.
TEST(RaftTest, CheckQuorumStepsDownAnIsolatedLeader) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);
  // The check runs every election_tick over what was heard since the last:
  // the first still sees the answers from before the cut.
  net.Tick(1, 10);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  net.Tick(1, 10);
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.raft(1).leader(), kNone);
  EXPECT_EQ(net.raft(1).Propose("x").code(), absl::StatusCode::kUnavailable);
}

// Leader stickiness (dissertation §4.2.3): while followers hear from their
// leader they ignore a vote request, even of a higher term.
TEST(RaftTest, CheckQuorumFollowersIgnoreVotesWhileTheyHaveALeader) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.pre_vote = false; });
  net.Elect(1);
  const uint64_t term = net.raft(1).term();
  net.Cut(1, 3);
  net.raft(3).Campaign();
  net.Settle();
  EXPECT_EQ(net.raft(3).role(), Role::kCandidate);
  EXPECT_EQ(net.raft(2).term(), term);
  EXPECT_EQ(net.raft(2).leader(), 1u);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
}

// §6.4: ReadIndex on the leader answers with the commit index once a quorum
// confirms its leadership; on a follower it is relayed to the leader.
TEST(RaftTest, Section6_4_ReadIndex) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  const uint64_t commit = net.raft(1).log().committed();
  ASSERT_TRUE(net.raft(1).ReadIndex("on-leader").ok());
  ASSERT_TRUE(net.raft(3).ReadIndex("on-follower").ok());
  net.Settle();
  ASSERT_EQ(net.reads(1).size(), 1u);
  EXPECT_EQ(net.reads(1)[0].context, "on-leader");
  EXPECT_EQ(net.reads(1)[0].index, commit);
  ASSERT_EQ(net.reads(3).size(), 1u);
  EXPECT_EQ(net.reads(3)[0].context, "on-follower");
  EXPECT_EQ(net.reads(3)[0].index, commit);
}

// §6.4: a leader that cannot reach a quorum answers no read: it may be deposed.
TEST(RaftTest, Section6_4_NoReadWithoutAQuorum) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).ReadIndex("r").ok());
  net.Tick(1, 5);
  EXPECT_TRUE(net.reads(1).empty());
  net.Heal();
  net.Tick(1, 1);  // the next heartbeat carries the read
  ASSERT_EQ(net.reads(1).size(), 1u);
}

// §6.4 step 1: a new leader answers reads only after committing an entry of its term.
TEST(RaftTest, Section6_4_NewLeaderReadsWaitForItsFirstCommit) {
  TestNetwork net({1, 2, 3});
  net.Block(MessageType::kAppResp);
  net.Elect(1);
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(1).ReadIndex("r").ok());
  net.Tick(1, 2);
  EXPECT_TRUE(net.reads(1).empty());
  net.Allow(MessageType::kAppResp);
  net.Tick(1, 2);
  ASSERT_EQ(net.reads(1).size(), 1u);
  EXPECT_EQ(net.reads(1)[0].index, net.raft(1).log().committed());
}

// Dissertation §3.10: leadership transfer to a caught-up voter; proposals are
// refused while it is under way.
TEST(RaftTest, LeadershipTransfer) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  const uint64_t term = net.raft(1).term();
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.Heal();
  net.Block(MessageType::kAppResp);  // hold the transfer until 3 catches up
  ASSERT_TRUE(net.raft(1).TransferLeadership(3).ok());
  EXPECT_EQ(net.raft(1).lead_transferee(), 3u);
  EXPECT_EQ(net.raft(1).Propose("b").code(), absl::StatusCode::kUnavailable);
  net.Allow(MessageType::kAppResp);
  net.Tick(1, 1);
  EXPECT_EQ(net.raft(3).role(), Role::kLeader);
  EXPECT_EQ(net.raft(3).term(), term + 1);
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  EXPECT_EQ(net.applied(3), (std::vector<std::string>{"a"}));
  EXPECT_EQ(net.raft(2).TransferLeadership(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(net.raft(3).TransferLeadership(9).code(), absl::StatusCode::kInvalidArgument);
}

// A transfer to an unreachable node is abandoned after an election timeout.
TEST(RaftTest, LeadershipTransferTimesOut) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  ASSERT_TRUE(net.raft(1).TransferLeadership(3).ok());
  net.Tick(1, 10);
  EXPECT_EQ(net.raft(1).lead_transferee(), kNone);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_TRUE(net.raft(1).Propose("b").ok());
}

// Learners get the log but neither vote nor count toward commitment; a
// promoted learner does both (dissertation §4.2.1).
TEST(RaftTest, LearnersCatchUpAndArePromoted) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.AddEmptyNode(4);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 4}).ok());
  net.Settle();
  ASSERT_EQ(net.raft(1).conf().learners, (std::vector<uint64_t>{4}));
  ASSERT_TRUE(net.raft(1).Propose("b").ok());
  net.Settle();
  EXPECT_EQ(net.applied(4), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(net.raft(4).conf().learners, (std::vector<uint64_t>{4}));
  // A learner never campaigns.
  net.Tick(4, 50);
  EXPECT_EQ(net.raft(4).role(), Role::kFollower);
  // With 2 and 3 cut off, the leader and the learner are no quorum.
  net.Cut(1, 2);
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose("c").ok());
  net.Settle();
  EXPECT_EQ(net.applied(1), (std::vector<std::string>{"a", "b"}));
  net.Heal();
  net.Settle();
  net.Tick(1, 1);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddVoter, 4}).ok());
  net.Settle();
  EXPECT_EQ(net.raft(1).conf().voters, (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(net.raft(1).conf().learners.empty());
}

// Dissertation §4.1 and the single-server change fix: one change at a time,
// and none until the leader's own no-op is applied.
TEST(RaftTest, MembershipChangesOneAtATime) {
  TestNetwork net({1, 2, 3});
  net.Block(MessageType::kAppResp);
  net.Elect(1);
  EXPECT_EQ(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 4}).code(),
            absl::StatusCode::kFailedPrecondition);  // its no-op is not yet committed
  net.Allow(MessageType::kAppResp);
  net.Tick(1, 1);
  net.AddEmptyNode(4);
  net.AddEmptyNode(5);
  net.Block(MessageType::kAppResp);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 4}).ok());
  EXPECT_EQ(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 5}).code(),
            absl::StatusCode::kFailedPrecondition);
  net.Allow(MessageType::kAppResp);
  net.Tick(1, 1);
  EXPECT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 5}).ok());
}

// Removing voters shrinks the quorum; the last voter cannot be removed; a
// removed leader steps down.
TEST(RaftTest, RemovingVoters) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 3}).ok());
  net.Settle();
  EXPECT_EQ(net.raft(1).conf().voters, (std::vector<uint64_t>{1, 2}));
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 2}).ok());
  net.Settle();
  ASSERT_EQ(net.raft(1).conf().voters, (std::vector<uint64_t>{1}));
  // Alone, node 1 commits by itself.
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).Propose("solo").ok());
  net.Settle();
  EXPECT_EQ(net.applied(1), (std::vector<std::string>{"solo"}));
  EXPECT_EQ(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 1}).code(),
            absl::StatusCode::kFailedPrecondition);

  TestNetwork net2({1, 2, 3});
  net2.Elect(1);
  ASSERT_TRUE(net2.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 1}).ok());
  net2.Settle();
  EXPECT_EQ(net2.raft(1).role(), Role::kFollower);
  net2.TickAll(30);
  const uint64_t leader = net2.Leader();
  EXPECT_TRUE(leader == 2 || leader == 3);
  // The removed node does not campaign.
  net2.Tick(1, 50);
  EXPECT_EQ(net2.raft(1).role(), Role::kFollower);
}

// §7: a follower behind the leader's compacted log is sent a snapshot, then
// the entries after it.
TEST(RaftTest, Section7_InstallSnapshot) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(net.raft(1).Propose(absl::StrCat("e", i)).ok());
  net.Settle();
  const uint64_t applied = net.raft(1).log().applied();
  ASSERT_TRUE(net.storage(1).CreateSnapshot(applied, net.raft(1).conf(), absl::StrCat("state-at-", applied), 0).ok());
  ASSERT_GT(net.storage(1).FirstIndex(), net.raft(3).log().LastIndex() + 1);
  net.Heal();
  net.TickAll(2);
  EXPECT_EQ(net.storage(3).GetSnapshot().data, absl::StrCat("state-at-", applied));
  EXPECT_EQ(net.raft(3).log().applied(), applied);
  ASSERT_TRUE(net.raft(1).Propose("after").ok());
  net.Settle();
  EXPECT_EQ(net.applied(3), (std::vector<std::string>{"after"}));
  EXPECT_EQ(net.raft(3).log().committed(), net.raft(1).log().committed());
}

// A restarted node keeps its term, vote, log and membership; its committed
// entries come back for the state machine to apply again.
TEST(RaftTest, RestartKeepsWhatWasPersisted) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 3}).ok());
  net.Settle();
  const uint64_t term = net.raft(2).term(), last = net.raft(2).log().LastIndex();
  net.Restart(2);
  EXPECT_EQ(net.raft(2).term(), term);
  EXPECT_EQ(net.raft(2).vote(), 1u);
  EXPECT_EQ(net.raft(2).log().LastIndex(), last);
  EXPECT_EQ(net.raft(2).conf().voters, (std::vector<uint64_t>{1, 2}));  // before re-applying
  net.Settle();
  EXPECT_EQ(net.applied(2), (std::vector<std::string>{"a"}));
}

// Messages from older terms are answered so a stale leader learns the term,
// and never change state.
TEST(RaftTest, StaleLeaderLearnsTheNewTerm) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);
  net.TickAll(30);  // 2 or 3 takes over; 1 steps down by check-quorum meanwhile
  const uint64_t leader = net.Leader();
  ASSERT_TRUE(leader == 2 || leader == 3);
  net.Heal();
  net.TickAll(2);
  EXPECT_EQ(net.raft(1).term(), net.raft(leader).term());
  EXPECT_EQ(net.raft(1).leader(), leader);
}

// A follower relays a proposal to the node it believes leads; if that node
// has meanwhile become a candidate or follower, the relay is dropped (the
// client retries), not an error of Step.
TEST(RaftTest, RelayedProposalsToANonLeaderAreDropped) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.pre_vote = false; });
  net.Elect(1);
  Message relay;
  relay.type = MessageType::kProp;
  relay.from = 2;
  relay.to = 3;
  relay.entries.push_back(Entry{.term = 0, .index = 0, .data = "x"});
  EXPECT_TRUE(net.raft(3).Step(relay).ok());  // a follower
  net.Isolate(3);
  net.raft(3).Campaign();
  ASSERT_EQ(net.raft(3).role(), Role::kCandidate);
  EXPECT_TRUE(net.raft(3).Step(relay).ok());  // a candidate
  relay.type = MessageType::kReadIndex;
  EXPECT_TRUE(net.raft(3).Step(relay).ok());
  // Its own proposal, though, is refused: there is no leader to take it.
  EXPECT_EQ(net.raft(3).Propose("y").code(), absl::StatusCode::kUnavailable);
}

// The state machine restarts from the snapshot, and compaction may keep
// entries before it: those are not handed out again.
TEST(RaftTest, RestartResumesAfterTheSnapshotNotTheFirstEntryKept) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(net.raft(1).Propose(absl::StrCat("e", i)).ok());
  net.Settle();
  const uint64_t applied = net.raft(2).log().applied();
  ASSERT_TRUE(net.storage(2).CreateSnapshot(applied, net.raft(2).conf(), "sm", /*keep=*/5).ok());
  ASSERT_LT(net.storage(2).FirstIndex(), applied);
  net.Restart(2);
  EXPECT_EQ(net.raft(2).log().applied(), applied);
  net.Settle();
  EXPECT_TRUE(net.applied(2).empty());
  ASSERT_TRUE(net.raft(1).Propose("next").ok());
  net.Settle();
  EXPECT_EQ(net.applied(2), (std::vector<std::string>{"next"}));
}

// A snapshot covers committed entries only: a node whose hard state did not
// record that commit (separate, unsynced writes) still starts, at the snapshot.
TEST(RaftTest, StartsFromASnapshotPastTheStoredCommit) {
  MemoryStorage s;
  ASSERT_TRUE(Bootstrap(&s, {1, 2, 3}).ok());
  Snapshot snap;
  snap.meta = SnapshotMeta{.index = 5, .term = 2, .conf = ConfState{.voters = {1, 2, 3}, .learners = {}}};
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());  // the hard state still says commit 1
  Config c;
  c.id = 1;
  c.storage = &s;
  auto r = Raft::Create(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->log().committed(), 5u);
  EXPECT_EQ((*r)->log().applied(), 5u);
}

TEST(RaftTest, OneMembershipChangePerProposal) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  const uint64_t last = net.raft(1).log().LastIndex();
  Message m;
  m.type = MessageType::kProp;
  m.from = 1;
  for (uint64_t node : {4, 5}) {
    m.entries.push_back(Entry{.term = 0, .index = 0, .type = EntryType::kConfChange,
                              .data = ConfChange{ConfChange::Type::kAddLearner, node}.Encode()});
  }
  EXPECT_EQ(net.raft(1).Step(m).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(net.raft(1).log().LastIndex(), last);
}

// §6.4: reads are matched to heartbeat acks by the leader's own sequence
// numbers, so two followers' reads with equal contexts are both answered.
TEST(RaftTest, Section6_4_EqualContextsFromTwoFollowersAreBothAnswered) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  ASSERT_TRUE(net.raft(2).ReadIndex("same").ok());
  ASSERT_TRUE(net.raft(3).ReadIndex("same").ok());
  ASSERT_TRUE(net.raft(1).ReadIndex("").ok());
  net.Settle();
  EXPECT_EQ(net.reads(2).size(), 1u);
  EXPECT_EQ(net.reads(3).size(), 1u);
  EXPECT_EQ(net.reads(1).size(), 1u);
}

// Lease reads need a quorum's ack of a heartbeat sent within the last
// election timeout, and are off for the rest of a term once a transfer began.
void LeaseConfig(Config& c) {
  c.lease_reads = true;
  c.rand = [](uint64_t n) { return n - 1; };  // no election of its own before 19 ticks
}

TEST(RaftTest, LeaseReadsNeedRecentAcksAndNoTransfer) {
  TestNetwork net({1, 2, 3}, LeaseConfig);
  net.TickAll(10);  // past the first election timeout, in which nobody votes
  net.Elect(1);
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).ReadIndex("r1").ok());  // nothing acked after a tick yet
  net.Settle();
  EXPECT_TRUE(net.reads(1).empty());
  net.Heal();
  net.Tick(1, 1);  // the heartbeat of tick 1 is acked and answers r1
  ASSERT_EQ(net.reads(1).size(), 1u);
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).ReadIndex("r2").ok());  // within the lease: at once
  net.Settle();
  ASSERT_EQ(net.reads(1).size(), 2u);
  net.Tick(1, 9);  // tick 10: the acks of tick 1 are too old
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  ASSERT_TRUE(net.raft(1).ReadIndex("r3").ok());
  net.Settle();
  EXPECT_EQ(net.reads(1).size(), 2u);
  net.Heal();
  net.Tick(1, 1);
  ASSERT_EQ(net.reads(1).size(), 3u);
  // A transfer that cannot finish: no lease reads in this term any more.
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).TransferLeadership(3).ok());
  ASSERT_TRUE(net.raft(1).ReadIndex("r4").ok());
  net.Settle();
  EXPECT_EQ(net.reads(1).size(), 3u);
}

// With lease reads, a restarted node grants no vote for an election timeout:
// it may have acknowledged a leader's heartbeat just before it stopped.
TEST(RaftTest, LeaseReadsRestartedNodeWaitsBeforeVoting) {
  TestNetwork net({1, 2, 3}, [](Config& c) {
    LeaseConfig(c);
    c.pre_vote = false;
  });
  net.raft(1).Campaign();  // nobody votes in its first election timeout
  net.Settle();
  EXPECT_NE(net.raft(1).role(), Role::kLeader);
  net.TickAll(10);
  net.Elect(1);
  ASSERT_EQ(net.raft(1).role(), Role::kLeader);
  net.Restart(2);
  net.Isolate(1);
  net.raft(3).Campaign();  // node 3 has not heard from 1 for a while, say
  net.Settle();
  EXPECT_NE(net.raft(3).role(), Role::kLeader);
  net.Tick(2, 10);  // node 2's first election timeout passes
  net.raft(3).Campaign();
  net.Settle();
  EXPECT_EQ(net.raft(3).role(), Role::kLeader);
}

// Found by the simulator (seed 1002345): node 4 missed its own promotion and
// still believes it is a learner; the leader then removed itself. Node 4
// must not defend the departed leader's lease forever: once it has not heard
// from it for an election timeout, it grants its vote, and the group (2, 3,
// 4, with 3 cut off) elects node 2.
TEST(RaftTest, ANodeThatCannotCampaignStillVotesOnceItsLeaderIsGone) {
  TestNetwork net({1, 2, 3}, [](Config& c) {
    // Node 4's timeout is exactly election_tick; the others' the longest.
    c.rand = [id = c.id](uint64_t n) { return id == 4 ? 0 : n - 1; };
  });
  net.Elect(1);
  net.AddEmptyNode(4);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddLearner, 4}).ok());
  net.Settle();
  net.Cut(1, 4);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kAddVoter, 4}).ok());
  net.Settle();
  ASSERT_EQ(net.raft(2).conf().voters, (std::vector<uint64_t>{1, 2, 3, 4}));
  ASSERT_EQ(net.raft(4).conf().learners, (std::vector<uint64_t>{4}));
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 1}).ok());
  net.Settle();
  ASSERT_EQ(net.raft(2).conf().voters, (std::vector<uint64_t>{2, 3, 4}));
  ASSERT_EQ(net.raft(4).leader(), 1u);
  net.Isolate(1);
  net.Isolate(3);
  net.TickAll(60);
  EXPECT_EQ(net.raft(2).role(), Role::kLeader);
}

// Found by the 100,000-seed run: a leader that removes itself steps down as
// soon as it applies the change. Followers it had paused never heard that
// the change committed, kept counting it toward their quorum and, with it
// gone, needed every other voter to agree. Its last heartbeats now tell
// them, whatever their replication state.
TEST(RaftTest, ARemovedLeaderTellsEveryFollowerTheChangeCommitted) {
  TestNetwork net({1, 2, 3});
  net.Elect(1);
  // The change's entries reach 2 and 3; the AppendEntries that would carry
  // the new commit index are lost.
  net.PassThenBlock(MessageType::kApp, 2);
  ASSERT_TRUE(net.raft(1).ProposeConfChange({ConfChange::Type::kRemove, 1}).ok());
  net.Settle();
  EXPECT_EQ(net.raft(1).role(), Role::kFollower);
  // Node 2's acknowledgement made the commit, so its match covers the change
  // (node 3's arrived after the leader had stepped down).
  EXPECT_EQ(net.raft(2).conf().voters, (std::vector<uint64_t>{2, 3}));
  net.Allow(MessageType::kApp);
  net.TickAll(30);
  const uint64_t leader = net.Leader();
  ASSERT_TRUE(leader == 2 || leader == 3);
  EXPECT_EQ(net.raft(3).conf().voters, (std::vector<uint64_t>{2, 3}));
}

// Found the same way, Figure 2: a higher term alone does not restart the
// election timer. Node 3, whose log is stale, times out first again and
// again (pre-vote off); if each of its vote requests restarted node 2's
// timer, node 2, the only node that can win, would never campaign.
TEST(RaftTest, StaleCandidatesDoNotHoldBackTheNodeThatCanWin) {
  TestNetwork net({1, 2, 3}, [](Config& c) {
    c.pre_vote = false;
    c.check_quorum = false;
    c.rand = [id = c.id](uint64_t n) { return id == 3 ? 0 : n - 1; };  // 3: 10 ticks, 2: 19
  });
  net.Elect(1);
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());  // on 1 and 2 only
  net.Settle();
  net.Isolate(1);
  net.TickAll(100);
  EXPECT_EQ(net.raft(2).role(), Role::kLeader);
}

TEST(RaftTest, UncommittedBytesAreBounded) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.max_uncommitted_bytes = 100; });
  net.Elect(1);
  net.Isolate(1);
  ASSERT_TRUE(net.raft(1).Propose(std::string(80, 'x')).ok());
  EXPECT_EQ(net.raft(1).Propose(std::string(30, 'y')).code(), absl::StatusCode::kResourceExhausted);
  net.Heal();
  net.Tick(1, 1);
  EXPECT_TRUE(net.raft(1).Propose(std::string(30, 'y')).ok());
}

// Quiescence: an idle group stops sending heartbeats once every member holds
// the whole log; a proposal wakes it, and it goes quiet again.
TEST(RaftTest, AnIdleGroupGoesQuietAndAProposalWakesIt) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.quiesce = true; });
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.TickAll(3);
  for (uint64_t id : {1, 2, 3}) EXPECT_TRUE(net.raft(id).quiesced()) << id;
  const uint64_t sent = net.sent();
  net.TickAll(50);  // five election timeouts: no messages, no election
  EXPECT_EQ(net.sent(), sent);
  EXPECT_EQ(net.raft(1).role(), Role::kLeader);
  EXPECT_EQ(net.raft(2).term(), net.raft(1).term());

  ASSERT_TRUE(net.raft(1).Propose("b").ok());
  EXPECT_FALSE(net.raft(1).quiesced());
  net.Settle();
  EXPECT_EQ(net.applied(3), (std::vector<std::string>{"a", "b"}));
  net.TickAll(3);
  for (uint64_t id : {1, 2, 3}) EXPECT_TRUE(net.raft(id).quiesced()) << id;
  // A read wakes the group too, and is answered.
  ASSERT_TRUE(net.raft(2).ReadIndex("r").ok());
  net.Settle();
  ASSERT_EQ(net.reads(2).size(), 1u);
  EXPECT_EQ(net.reads(2)[0].context, "r");
}

// The leader stays awake while a member does not answer or lacks entries.
TEST(RaftTest, AGroupWithAMemberBehindDoesNotGoQuiet) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.quiesce = true; });
  net.Elect(1);
  net.Cut(1, 3);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.TickAll(30);
  EXPECT_FALSE(net.raft(1).quiesced());
  EXPECT_FALSE(net.raft(3).quiesced());
  net.Heal();
  net.TickAll(30);
  EXPECT_EQ(net.applied(3), (std::vector<std::string>{"a"}));
  for (uint64_t id : {1, 2, 3}) EXPECT_TRUE(net.raft(id).quiesced()) << id;
}

// A quiet group whose leader is gone: the driver wakes the followers
// (Unquiesce with the leader lost) and they elect a new leader within an
// election timeout. A follower woken alone does not unseat a live leader.
TEST(RaftTest, QuietFollowersWokenForALostLeaderElectAnother) {
  TestNetwork net({1, 2, 3}, [](Config& c) { c.quiesce = true; });
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.TickAll(3);
  ASSERT_TRUE(net.raft(2).quiesced());
  const uint64_t term = net.raft(1).term();
  // Node 2 alone believes the leader lost: its pre-vote wakes the others,
  // who still trust the leader; nothing changes.
  net.raft(2).Unquiesce(/*leader_lost=*/true);
  net.TickAll(40);
  EXPECT_EQ(net.Leader(), 1u);
  EXPECT_EQ(net.raft(1).term(), term);
  // The leader really is gone.
  net.TickAll(3);
  ASSERT_TRUE(net.raft(2).quiesced());
  net.Isolate(1);
  net.raft(2).Unquiesce(/*leader_lost=*/true);
  net.raft(3).Unquiesce(/*leader_lost=*/true);
  for (int i = 0; i < 10 && net.raft(2).role() != Role::kLeader && net.raft(3).role() != Role::kLeader; ++i) {
    net.Tick(2, 1);
    net.Tick(3, 1);
  }
  EXPECT_TRUE(net.raft(2).role() == Role::kLeader || net.raft(3).role() == Role::kLeader);
}

// A group that goes quiet, with neither pre-vote nor check-quorum to shield
// the leader from a follower that times out.
void QuietNoPreVote(Config& c) {
  c.quiesce = true;
  c.pre_vote = false;
  c.check_quorum = false;
}
// Elects node 1, commits an entry and lets the group go quiet.
void GoQuiet(TestNetwork& net) {
  net.Elect(1);
  ASSERT_TRUE(net.raft(1).Propose("a").ok());
  net.Settle();
  net.TickAll(3);
  for (uint64_t id : {1, 2, 3}) ASSERT_TRUE(net.raft(id).quiesced()) << id;
}

// Found by the simulator with quiescence (seed 1185): a follower that missed
// the quiet heartbeat stayed awake, timed out and, without pre-vote, deposed
// the leader. The leader now wakes when a member has not gone quiet within
// half an election timeout.
TEST(RaftTest, AQuietLeaderWakesWhenAMemberMissedTheQuietHeartbeat) {
  TestNetwork net({1, 2, 3}, QuietNoPreVote);
  ASSERT_NO_FATAL_FAILURE(GoQuiet(net));
  // A read wakes the group; the quiet heartbeat that follows misses node 3.
  ASSERT_TRUE(net.raft(1).ReadIndex("r").ok());
  net.Settle();
  net.Cut(1, 3);
  net.Tick(1, 1);
  ASSERT_TRUE(net.raft(1).quiesced());
  EXPECT_FALSE(net.raft(3).quiesced());
  net.Heal();
  const uint64_t term = net.raft(1).term();
  net.TickAll(60);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.Leader(), 1u);
  for (uint64_t id : {1, 2, 3}) EXPECT_TRUE(net.raft(id).quiesced()) << id;
}

// Found by the simulator with quiescence (seed 1514): a follower woken by a
// stray message (not its leader's) timed out while its leader stayed quiet.
// Waking, a follower now tells its leader, which heartbeats again.
TEST(RaftTest, AFollowerWokenByAStrayMessageWakesItsLeader) {
  TestNetwork net({1, 2, 3}, QuietNoPreVote);
  ASSERT_NO_FATAL_FAILURE(GoQuiet(net));
  const uint64_t term = net.raft(1).term();
  Message stray;
  stray.type = MessageType::kHeartbeatResp;  // meaningless to a follower
  stray.from = 2;
  stray.to = 3;
  stray.term = term;
  ASSERT_TRUE(net.raft(3).Step(stray).ok());
  EXPECT_FALSE(net.raft(3).quiesced());
  net.Settle();
  EXPECT_FALSE(net.raft(1).quiesced());
  net.TickAll(60);
  EXPECT_EQ(net.raft(1).term(), term);
  EXPECT_EQ(net.Leader(), 1u);
  for (uint64_t id : {1, 2, 3}) EXPECT_TRUE(net.raft(id).quiesced()) << id;
}

}  // namespace
}  // namespace cairn::raft
