// FreePort: a loopback TCP port for a test's server, never one this process
// handed out before (the kernel may offer a port again once the probing
// socket is closed: two nodes of one test were once given the same one).
#ifndef CAIRN_CLUSTER_TEST_PORTS_H_
#define CAIRN_CLUSTER_TEST_PORTS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <set>

namespace cairn::testing_ports {

inline int FreePort() {
  static std::mutex mu;
  static std::set<int> given;
  std::lock_guard l(mu);
  for (int attempt = 0;; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    const int port = ntohs(a.sin_port);
    if (given.insert(port).second || attempt > 100) return port;
  }
}

}  // namespace cairn::testing_ports

#endif  // CAIRN_CLUSTER_TEST_PORTS_H_
