// ucx_test_peer: one UcxTransport in a process of its own, for the tests that need a peer to die as
// a process dies (ucx_transport_test's PeerProcessDiesMidExchange). It connects to the test's peer
// (--peer, whose address and the secret it made for us come in hex on the command line), admits it,
// writes "<our address in hex> <the secret we made for it in hex>" to --address_file (atomically: a
// rename), waits for one message from it, then dies as --die says:
//   exit: the transport is destroyed (it tells its peers goodbye), then the process exits 0;
//   kill: the process SIGKILLs itself mid-exchange, with no goodbye (a crash).
// A setup failure exits 1 with the reason on stderr.
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/transport/ucx/ucx_transport.h"

ABSL_FLAG(int32_t, self, 1, "this transport's peer id");
ABSL_FLAG(int32_t, peer, 0, "the test's transport's peer id");
ABSL_FLAG(std::string, peer_address, "", "the peer's WorkerAddress(), in hex");
ABSL_FLAG(std::string, peer_secret, "", "the secret the peer made for us (its Admit), in hex");
ABSL_FLAG(std::string, tls, "", "UcxOptions::tls (UCX_TLS); empty: the environment's");
ABSL_FLAG(std::string, poll_spin_us, "auto", "UcxOptions::poll_spin, as the services' --ucx_poll_spin_us");
ABSL_FLAG(std::string, address_file, "", "where to write our address and secret");
ABSL_FLAG(std::string, die, "kill", "how to die after the first message: exit or kill");
ABSL_FLAG(int64_t, max_message_bytes, 16 << 20, "the size bound we admit the peer with");

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::cerr << "ucx_test_peer: " << what << std::endl;
  std::exit(1);
}

std::string FromHex(const std::string& flag, const std::string& hex) {
  const bool is_hex = !hex.empty() && hex.size() % 2 == 0 &&
                      hex.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
  if (!is_hex) Fail(absl::StrCat("--", flag, ": not hex"));
  return absl::HexStringToBytes(hex);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using moe::transport::MessageKind;
  using moe::transport::MessageTag;
  using moe::transport::UcxTransport;
  const std::string die = absl::GetFlag(FLAGS_die);
  if (die != "exit" && die != "kill") Fail("--die: exit or kill");
  const std::string address_file = absl::GetFlag(FLAGS_address_file);
  if (address_file.empty()) Fail("--address_file is required");
  const int32_t peer = absl::GetFlag(FLAGS_peer);

  moe::transport::UcxOptions options;
  options.tls = absl::GetFlag(FLAGS_tls);
  auto spin = moe::transport::ParsePollSpinFlag(absl::GetFlag(FLAGS_poll_spin_us), "--poll_spin_us");
  if (!spin.ok()) Fail(std::string(spin.status().message()));
  options.poll_spin = *spin;
  options.send_timeout = absl::Seconds(20);
  auto created = UcxTransport::Create(absl::GetFlag(FLAGS_self), options);
  if (!created.ok()) Fail(created.status().ToString());
  std::unique_ptr<UcxTransport> transport = *std::move(created);
  auto secret = transport->Admit(peer, static_cast<size_t>(absl::GetFlag(FLAGS_max_message_bytes)));
  if (!secret.ok()) Fail(secret.status().ToString());
  const absl::Status connected =
      transport->Connect(peer, FromHex("peer_address", absl::GetFlag(FLAGS_peer_address)),
                         FromHex("peer_secret", absl::GetFlag(FLAGS_peer_secret)));
  if (!connected.ok()) Fail(connected.ToString());
  {
    const std::string tmp = address_file + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << absl::BytesToHexString(transport->WorkerAddress()) << " "
                                        << absl::BytesToHexString(*secret) << "\n";
    if (std::rename(tmp.c_str(), address_file.c_str()) != 0) Fail("cannot write " + address_file);
  }
  const MessageTag first_tag{MessageKind::kDispatch, /*step=*/0, /*layer=*/0, /*micro_batch=*/0, peer};
  auto first = transport->ReceiveTagged(first_tag, absl::Now() + absl::Seconds(20));
  if (!first.ok()) Fail(first.status().ToString());
  std::cerr << "ucx_test_peer: received " << first->payload.size() << " bytes; dying (" << die << ")"
            << std::endl;
  if (die == "kill") std::raise(SIGKILL);
  transport.reset();
  return 0;
}
