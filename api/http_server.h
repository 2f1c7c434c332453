// A small HTTP/1.1 server for operational endpoints (/metrics, /healthz,
// /readyz): GET only, one request per connection, bounded request size. Not a
// general web server; it serves text that a handler produces.
#ifndef CAIRN_API_HTTP_SERVER_H_
#define CAIRN_API_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace cairn::api {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // Called with the request path (query string removed).
  using Handler = std::function<HttpResponse(const std::string& path)>;

  explicit HttpServer(Handler handler) : handler_(std::move(handler)) {}
  ~HttpServer() { Stop(); }

  // Binds host:port (port 0 picks one) and serves on a thread; returns the port.
  absl::StatusOr<int> Start(const std::string& address);
  void Stop();

 private:
  void Loop();
  void Serve(int fd);
  Handler handler_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace cairn::api

#endif  // CAIRN_API_HTTP_SERVER_H_
