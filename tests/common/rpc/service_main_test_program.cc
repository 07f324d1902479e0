// A service binary with nothing of its own, for service_main_test: ServiceMain's flags, --help,
// --version and logging as a real process sees them. With --serve it also serves gRPC on --listen
// and exits 0 right after.
#include "absl/flags/flag.h"
#include "common/rpc/service_main.h"

ABSL_FLAG(bool, serve, false, "also start the gRPC server on --listen, then exit");

int main(int argc, char** argv) {
  auto service = moe::rpc::ServiceMain::Init(argc, argv,
                                             {.binary = "moe-test-service",
                                              .role = "test_service",
                                              .usage = "moe-test-service: a test.\n\nUsage: x"});
  VLOG(1) << "a debug line";
  LOG(INFO) << "an info line";
  LOG(WARNING) << "a warning line";
  LOG(ERROR) << "an error line";
  if (absl::GetFlag(FLAGS_serve)) {
    if (absl::Status s = service->Serve({}); !s.ok()) return service->Fail(s);
  }
  return 0;
}
