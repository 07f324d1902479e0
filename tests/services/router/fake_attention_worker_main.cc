// fake-attention-worker: a stand-in attention worker process for end-to-end tests of the router
// that need the model's output to be known (the HTTP API oracle's tool-call round trip). Every
// Generate streams the tokens of --script (tokenized with the tokenizer of --model) and stops.
//
// Usage: fake-attention-worker --model DIR --listen HOST:PORT --script TEXT
// Serves plaintext gRPC (start the router with --insecure); exits on SIGTERM or SIGINT.
#include <csignal>
#include <iostream>
#include <string>

#include "common/rpc/flags.h"
#include "common/rpc/server.h"
#include "common/tokenizer/tokenizer.h"
#include "services/router/served_model.h"
#include "tests/services/router/fake_attention_worker.h"

int main(int argc, char** argv) {
  std::string model_dir, listen, script;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model")
      model_dir = argv[i + 1];
    else if (flag == "--listen")
      listen = argv[i + 1];
    else if (flag == "--script")
      script = argv[i + 1];
    else {
      std::cerr << "fake-attention-worker: unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (model_dir.empty() || listen.empty() || script.empty()) {
    std::cerr << "usage: fake-attention-worker --model DIR --listen HOST:PORT --script TEXT\n";
    return 2;
  }
  auto model = moe::router::ServedModel::Load(model_dir, "");
  if (!model.ok()) {
    std::cerr << "fake-attention-worker: " << model.status() << "\n";
    return 1;
  }
  moe::router::fakes::FakeWorker worker;
  auto ids = (*model)->tokenizer->Encode(script);
  if (!ids.ok()) {
    std::cerr << "fake-attention-worker: --script: " << ids.status() << "\n";
    return 2;
  }
  worker.script = *ids;
  moe::rpc::BlockTerminationSignals();
  auto server = moe::rpc::GrpcServer::Start(listen, {&worker});
  if (!server.ok()) {
    std::cerr << "fake-attention-worker: " << server.status() << "\n";
    return 1;
  }
  (*server)->SetStarted();
  (*server)->SetReady(true);
  std::cerr << "fake-attention-worker: serving " << worker.script.size() << " scripted tokens on " << listen
            << std::endl;
  moe::rpc::WaitForTerminationSignal();
  (*server)->Shutdown(absl::Seconds(1));
  return 0;
}
