// CairnServer: the cairn.v1 gRPC services over an embedded Database, with the
// standard health service and server reflection.
//
// Requests run on a bounded worker pool, never on gRPC's callback threads: a
// full queue answers RESOURCE_EXHAUSTED at once rather than queueing without
// bound. Until the database is loaded, calls answer UNAVAILABLE and health
// says NOT_SERVING; after Load, SERVING; during Shutdown, NOT_SERVING again.
//
// Thread-safety: Start, Load and Shutdown are called from one thread, in
// that order; StopReady and SetApiKeys from any thread before Shutdown.
#ifndef CAIRN_API_SERVICE_H_
#define CAIRN_API_SERVICE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "api/auth.h"
#include "cairn/database.h"

namespace cairn::api {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free one (Start returns it).
  // Default: 127.0.0.1:7600.
  std::string listen = "127.0.0.1:7600";
  // host:port of the HTTP endpoints /metrics (Prometheus), /healthz and
  // /readyz; empty turns them off. Default: 127.0.0.1:7601.
  std::string http_listen = "127.0.0.1:7601";
  // Threads that run requests, in each of the read and write lanes (admin
  // calls have a lane of at most 2). 0: the number of cores. Default: 0.
  int worker_threads = 0;
  // Requests waiting for a worker, per lane, before new ones are refused.
  // Default: 1024.
  int max_queued_requests = 1024;
  // Largest request message, in bytes. Default: 64 MiB.
  int max_request_bytes = 64 << 20;
  // API keys; nullopt serves every call unauthenticated (loopback
  // development only: cairnd refuses it on other addresses).
  std::optional<ApiKeys> api_keys;
  // TLS: PEM server certificate chain and private key (both or neither).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // mTLS: PEM CA that client certificates must chain to; empty for none.
  std::string tls_client_ca_pem;
};

class CairnServer {
 public:
  explicit CairnServer(ServerOptions options);
  ~CairnServer();

  // Binds and starts serving (health NOT_SERVING); returns the bound gRPC
  // port. Unavailable when an address cannot be bound.
  absl::StatusOr<int> Start();
  // The bound HTTP port; 0 when HTTP is off.
  int http_port() const;
  // Takes the opened database and starts answering (health SERVING).
  void Serve(std::unique_ptr<Database> db);
  // From now on /readyz answers 503 "draining" and health NOT_SERVING,
  // while calls are still served: what SIGTERM does first, so that load
  // balancers stop sending calls before a cluster node hands off its
  // leaderships and Shutdown refuses calls.
  void StopReady();
  // Replaces the API keys (the keys file, read again after it changed);
  // calls from then on are checked against `keys`. FailedPrecondition when
  // the server was started without keys (auth off stays off).
  absl::Status SetApiKeys(ApiKeys keys);
  // Health NOT_SERVING, stop accepting calls, let calls in flight finish
  // (cancelling them after `grace`), then close the database.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::api

#endif  // CAIRN_API_SERVICE_H_
