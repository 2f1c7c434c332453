#include "cluster/peer.h"

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"

namespace cairn::cluster {
namespace {

constexpr char kSecretHeader[] = "x-cairn-cluster-secret";
constexpr int kMaxMessageBytes = 256 << 20;
// Messages queued for one peer before new ones are dropped.
constexpr size_t kMaxQueuedMessages = 16384;
// Bytes of entries sent as one batch on the stream.
constexpr size_t kBatchBytes = 4 << 20;

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

grpc::ChannelArguments ChannelArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // A peer that vanished without closing its connection is noticed in seconds.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return args;
}

size_t EntryBytes(const pb::RaftMessage& m) {
  size_t n = 64;
  for (const auto& e : m.entries()) n += e.data().size() + 24;
  return n + m.snapshot().data().size();
}

}  // namespace

bool IsLoopbackAddress(const std::string& address) {
  std::string host = address;
  if (!host.empty() && host[0] == '[') {
    host = host.substr(1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
  } else if (auto colon = host.rfind(':'); colon != std::string::npos && host.find(':') == colon) {
    host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

// ---- messages ----------------------------------------------------------------

void EncodeRaftMessage(uint64_t group, const raft::Message& m, pb::RaftMessage* out) {
  out->set_group(group);
  out->set_type(static_cast<uint32_t>(m.type));
  out->set_from(m.from);
  out->set_to(m.to);
  out->set_term(m.term);
  out->set_log_term(m.log_term);
  out->set_index(m.index);
  out->set_commit(m.commit);
  for (const auto& e : m.entries) {
    auto* pe = out->add_entries();
    pe->set_term(e.term);
    pe->set_index(e.index);
    pe->set_type(static_cast<uint32_t>(e.type));
    pe->set_data(e.data);
  }
  if (m.snapshot) {
    auto* s = out->mutable_snapshot();
    s->set_index(m.snapshot->meta.index);
    s->set_term(m.snapshot->meta.term);
    for (uint64_t v : m.snapshot->meta.conf.voters) s->add_voters(v);
    for (uint64_t l : m.snapshot->meta.conf.learners) s->add_learners(l);
    s->set_data(m.snapshot->data);
  }
  out->set_reject(m.reject);
  out->set_reject_hint(m.reject_hint);
  out->set_context(m.context);
  out->set_quiesce(m.quiesce);
}

absl::StatusOr<raft::Transport::GroupMessage> DecodeRaftMessage(const pb::RaftMessage& in) {
  if (in.type() > static_cast<uint32_t>(raft::MessageType::kReadIndexResp)) {
    return absl::InvalidArgumentError(absl::StrCat("raft message of unknown type ", in.type()));
  }
  raft::Transport::GroupMessage gm;
  gm.group = in.group();
  raft::Message& m = gm.msg;
  m.type = static_cast<raft::MessageType>(in.type());
  m.from = in.from();
  m.to = in.to();
  m.term = in.term();
  m.log_term = in.log_term();
  m.index = in.index();
  m.commit = in.commit();
  m.entries.reserve(in.entries_size());
  for (const auto& pe : in.entries()) {
    if (pe.type() > 1) return absl::InvalidArgumentError(absl::StrCat("raft entry of unknown type ", pe.type()));
    m.entries.push_back(raft::Entry{.term = pe.term(), .index = pe.index(),
                                    .type = static_cast<raft::EntryType>(pe.type()), .data = pe.data()});
  }
  if (in.has_snapshot()) {
    raft::Snapshot s;
    s.meta.index = in.snapshot().index();
    s.meta.term = in.snapshot().term();
    s.meta.conf.voters.assign(in.snapshot().voters().begin(), in.snapshot().voters().end());
    s.meta.conf.learners.assign(in.snapshot().learners().begin(), in.snapshot().learners().end());
    s.data = in.snapshot().data();
    m.snapshot = std::move(s);
  }
  m.reject = in.reject();
  m.reject_hint = in.reject_hint();
  m.context = in.context();
  m.quiesce = in.quiesce();
  return gm;
}

// ---- the sending side --------------------------------------------------------

// One destination: a queue and the thread that streams it.
class PeerClients::Link {
 public:
  Link(PeerClients* owner, uint64_t node, std::string address)
      : owner_(owner), node_(node), address_(std::move(address)), thread_([this] { Run(); }) {}
  ~Link() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
      if (ctx_) ctx_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
  }
  const std::string& address() const { return address_; }

  // False when the queue is full (the batch is dropped).
  bool Push(std::vector<GroupMessage> batch) {
    std::lock_guard l(mu_);
    if (queued_ + batch.size() > kMaxQueuedMessages) return false;
    queued_ += batch.size();
    queue_.push_back(std::move(batch));
    cv_.notify_all();
    return true;
  }

 private:
  void Run() {
    auto backoff = std::chrono::milliseconds(50);
    std::unique_ptr<pb::Peer::Stub> stub = owner_->StubFor(address_);
    std::unique_ptr<grpc::ClientWriter<pb::RaftBatch>> writer;
    pb::RaftAck ack;
    std::unique_lock l(mu_);
    while (!stop_) {
      cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
      if (stop_) break;
      // Everything queued goes out as batches of up to kBatchBytes.
      std::deque<std::vector<GroupMessage>> work;
      work.swap(queue_);
      queued_ = 0;
      if (!writer) {
        ctx_ = owner_->NewContext(std::chrono::hours(24 * 365));
        grpc::ClientContext* ctx = ctx_.get();
        l.unlock();
        writer = stub->Raft(ctx, &ack);
        l.lock();
        if (stop_) break;
      }
      l.unlock();
      // Lock order: the owner's mutex, then a link's (Send takes them so).
      std::string cluster_id;
      {
        std::lock_guard ol(owner_->mu_);
        cluster_id = owner_->cluster_id_;
      }
      bool ok = true;
      pb::RaftBatch batch;
      size_t bytes = 0;
      // An empty batch queued is a keepalive: it goes out even without messages.
      bool keepalive = false;
      for (const auto& b : work) keepalive = keepalive || b.empty();
      bool wrote = false;
      auto flush = [&] {
        if ((batch.messages_size() == 0 && (wrote || !keepalive)) || !ok) return;
        wrote = true;
        batch.set_cluster_id(cluster_id);
        batch.set_from_node(owner_->self_);
        batch.set_to_node(node_);
        ok = writer->Write(batch);
        if (ok) owner_->sent_++;
        batch.Clear();
        bytes = 0;
      };
      for (auto& b : work) {
        for (auto& gm : b) {
          EncodeRaftMessage(gm.group, gm.msg, batch.add_messages());
          bytes += EntryBytes(batch.messages(batch.messages_size() - 1));
          if (bytes >= kBatchBytes) flush();
        }
      }
      flush();
      l.lock();
      if (ok) {
        backoff = std::chrono::milliseconds(50);
        continue;
      }
      // The stream broke: the messages are gone (Raft sends again); the
      // node loop learns the peer is unreachable; try again after a pause.
      owner_->dropped_++;
      grpc::ClientContext* ctx = ctx_.get();
      ctx->TryCancel();
      l.unlock();
      (void)writer->Finish();
      {
        std::lock_guard ol(owner_->mu_);
        if (owner_->node_) owner_->node_->ReportUnreachable(node_);
      }
      l.lock();
      writer.reset();
      ctx_.reset();
      cv_.wait_for(l, backoff, [this] { return stop_; });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
      queue_.clear();
      queued_ = 0;
    }
    if (writer) {
      l.unlock();
      (void)writer->Finish();
      l.lock();
    }
  }

  PeerClients* const owner_;
  const uint64_t node_;
  const std::string address_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<std::vector<GroupMessage>> queue_;
  size_t queued_ = 0;
  std::unique_ptr<grpc::ClientContext> ctx_;  // of the open stream
  std::thread thread_;
};

PeerClients::PeerClients(uint64_t self, PeerSecurity security) : self_(self), security_(std::move(security)) {}

PeerClients::~PeerClients() {
  std::map<uint64_t, std::unique_ptr<Link>> links;
  {
    std::lock_guard l(mu_);
    links.swap(links_);
    node_ = nullptr;
  }
  links.clear();  // joins each link's thread, outside mu_ (they take it)
}

void PeerClients::SetClusterId(const std::string& id) {
  std::lock_guard l(mu_);
  cluster_id_ = id;
}

void PeerClients::SetNode(raft::Node* node) {
  std::lock_guard l(mu_);
  node_ = node;
}

void PeerClients::SetAddress(uint64_t node, const std::string& address) {
  std::unique_ptr<Link> old;
  {
    std::lock_guard l(mu_);
    auto& link = links_[node];
    if (link && link->address() == address) return;
    old = std::move(link);
    link = std::make_unique<Link>(this, node, address);
  }
}

void PeerClients::Forget(uint64_t node) {
  std::unique_ptr<Link> old;
  std::lock_guard l(mu_);
  auto it = links_.find(node);
  if (it == links_.end()) return;
  old = std::move(it->second);
  links_.erase(it);
}

void PeerClients::Send(uint64_t to_node, std::vector<GroupMessage> batch) {
  std::lock_guard l(mu_);
  auto it = links_.find(to_node);
  if (it == links_.end() || !it->second->Push(std::move(batch))) dropped_++;
}

std::shared_ptr<grpc::Channel> PeerClients::ChannelFor(const std::string& address) {
  std::lock_guard l(channels_mu_);
  auto& channel = channels_[address];
  if (channel) return channel;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  grpc::ChannelArguments args = ChannelArgs();
  if (security_.tls()) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = security_.tls_ca_pem;
    o.pem_private_key = security_.tls_key_pem;
    o.pem_cert_chain = security_.tls_cert_pem;
    creds = grpc::SslCredentials(o);
    if (!security_.tls_server_name.empty()) args.SetSslTargetNameOverride(security_.tls_server_name);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  channel = grpc::CreateCustomChannel(address, creds, args);
  return channel;
}

std::unique_ptr<pb::Peer::Stub> PeerClients::StubFor(const std::string& address) {
  return pb::Peer::NewStub(ChannelFor(address));
}

std::unique_ptr<grpc::ClientContext> PeerClients::NewContext(std::chrono::milliseconds timeout) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!security_.secret.empty()) ctx->AddMetadata(kSecretHeader, security_.secret);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

// ---- the receiving side ------------------------------------------------------

class PeerServer::Service final : public pb::Peer::CallbackService {
 public:
  Service(PeerSecurity security, PeerHandler* handler) : security_(std::move(security)), handler_(handler) {}

  grpc::ServerReadReactor<pb::RaftBatch>* Raft(grpc::CallbackServerContext* ctx, pb::RaftAck*) override {
    class Reader final : public grpc::ServerReadReactor<pb::RaftBatch> {
     public:
      Reader(Service* s, bool authorized) : s_(s) {
        if (!authorized) {
          Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "peer: wrong or missing cluster secret"));
          return;
        }
        StartRead(&batch_);
      }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        const std::string ours = s_->handler_->ClusterId();
        if (ours.empty() || batch_.cluster_id() != ours || batch_.to_node() != s_->handler_->NodeId()) {
          const std::string why =
              ours.empty() ? "this node is not in a cluster yet"
                           : absl::StrCat("batch for cluster \"", batch_.cluster_id(), "\" node ", batch_.to_node(),
                                          ", but this is cluster \"", ours, "\" node ", s_->handler_->NodeId());
          // Logged once a minute at most: a peer retries its stream.
          static std::atomic<int64_t> last_log_s{0};
          const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                                    std::chrono::steady_clock::now().time_since_epoch())
                                    .count();
          if (!ours.empty() && now_s - last_log_s.exchange(now_s) >= 60) {
            std::fprintf(stderr, "cairn: peer: refused Raft messages from node %llu: %s\n",
                         static_cast<unsigned long long>(batch_.from_node()), why.c_str());
          }
          Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why));
          return;
        }
        std::vector<raft::Transport::GroupMessage> msgs;
        msgs.reserve(batch_.messages_size());
        for (const auto& m : batch_.messages()) {
          auto gm = DecodeRaftMessage(m);
          if (gm.ok()) msgs.push_back(std::move(*gm));
        }
        s_->handler_->DeliverRaft(batch_.from_node(), std::move(msgs));
        batch_.Clear();
        StartRead(&batch_);
      }
      void OnDone() override { delete this; }

     private:
      Service* s_;
      pb::RaftBatch batch_;
    };
    return new Reader(this, Authorized(ctx));
  }

  grpc::ServerUnaryReactor* Hello(grpc::CallbackServerContext* ctx, const pb::HelloRequest* req,
                                  pb::HelloResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!Authorized(ctx)) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "peer: wrong or missing cluster secret"));
    } else {
      *resp = handler_->Hello(*req);
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* NodeStatus(grpc::CallbackServerContext* ctx, const pb::NodeStatusRequest* req,
                                       pb::NodeStatusResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (grpc::Status refused = Refused(ctx, req->cluster_id()); !refused.ok()) {
      reactor->Finish(refused);
    } else {
      *resp = handler_->NodeStatus();
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* FetchSnapshotChunk(grpc::CallbackServerContext* ctx, const pb::SnapshotChunkRequest* req,
                                               pb::SnapshotChunk* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (grpc::Status refused = Refused(ctx, req->cluster_id()); !refused.ok()) {
      reactor->Finish(refused);
      return reactor;
    }
    auto chunk = handler_->ReadSnapshotChunk(req->snapshot_id(), req->path(), req->offset(), req->length());
    if (chunk.ok()) {
      resp->set_data(*std::move(chunk));
      reactor->Finish(grpc::Status::OK);
    } else {
      reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(chunk.status().code()),
                                   std::string(chunk.status().message())));
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* SnapshotDone(grpc::CallbackServerContext* ctx, const pb::SnapshotDoneRequest* req,
                                         pb::SnapshotDoneResponse*) override {
    auto* reactor = ctx->DefaultReactor();
    grpc::Status refused = Refused(ctx, req->cluster_id());
    if (refused.ok()) handler_->SnapshotDone(req->snapshot_id(), req->ok(), req->error());
    reactor->Finish(refused);
    return reactor;
  }

  grpc::ServerUnaryReactor* Shard(grpc::CallbackServerContext* ctx, const pb::ShardRequest* req,
                                  pb::ShardResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (grpc::Status refused = Refused(ctx, req->cluster_id()); !refused.ok()) {
      reactor->Finish(refused);
      return reactor;
    }
    handler_->Shard(*req, [reactor, resp](pb::ShardResponse r) {
      *resp = std::move(r);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

 private:
  // Why a call from `ctx` for cluster `cluster_id` is refused (OK: it is not).
  grpc::Status Refused(grpc::CallbackServerContext* ctx, const std::string& cluster_id) const {
    if (!Authorized(ctx)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "peer: wrong or missing cluster secret");
    }
    const std::string ours = handler_->ClusterId();
    if (ours.empty() || cluster_id != ours) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("peer: request for cluster \"", cluster_id, "\"; this node is in \"", ours,
                                       "\""));
    }
    return grpc::Status::OK;
  }

  bool Authorized(grpc::CallbackServerContext* ctx) const {
    if (security_.secret.empty()) return true;
    const auto& md = ctx->client_metadata();
    auto it = md.find(kSecretHeader);
    if (it == md.end()) return false;
    return ConstantTimeEquals(std::string_view(it->second.data(), it->second.size()), security_.secret);
  }

  const PeerSecurity security_;
  PeerHandler* const handler_;
};

absl::StatusOr<std::unique_ptr<PeerServer>> PeerServer::Start(const std::string& listen, PeerSecurity security,
                                                              PeerHandler* handler) {
  if (!IsLoopbackAddress(listen) && security.secret.empty() && !security.tls()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the peer port ", listen, " is not on loopback: give it a cluster secret (--cluster-secret-file) "
        "or mTLS (--peer-tls-cert, --peer-tls-key, --peer-tls-ca) so that only nodes of this cluster can join"));
  }
  if (security.tls() && (security.tls_key_pem.empty() || security.tls_ca_pem.empty())) {
    return absl::InvalidArgumentError("peer mTLS needs a certificate, its key and the CA peers chain to");
  }
  std::unique_ptr<PeerServer> s(new PeerServer());
  s->service_ = std::make_unique<Service>(security, handler);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (security.tls()) {
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = security.tls_ca_pem;
    ssl.pem_key_cert_pairs.push_back({security.tls_key_pem, security.tls_cert_pem});
    creds = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(listen, creds, &s->port_);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  return s;
}

PeerServer::~PeerServer() { Shutdown(std::chrono::milliseconds(0)); }

void PeerServer::Shutdown(std::chrono::milliseconds grace) {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + grace);
    server_->Wait();
    server_.reset();
  }
}

}  // namespace cairn::cluster
