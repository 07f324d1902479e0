// moe-router: the public moe.v1.Generation API of the cluster. Tokenizes, validates, queues and
// places requests on attention workers and streams their text back. Flags and env: --help,
// deploy/k8s/README.md.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "common/rpc/flags.h"
#include "common/rpc/service_main.h"
#include "services/router/api_keys.h"
#include "services/router/attention_worker_pool.h"
#include "services/router/generate_service.h"
#include "services/router/openai/http_server.h"
#include "services/router/request_validation.h"
#include "services/router/router_metrics.h"
#include "services/router/served_model.h"
#include "services/router/worker_discovery.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory (only tokenizer and config are read)");
ABSL_FLAG(std::string, model_name, "", "served model name; empty: the model directory's base name");
ABSL_FLAG(std::string, attention_workers, "", "attention workers H:P,... (a fixed set)");
ABSL_FLAG(std::string, attention_workers_file, "",
          "instead of --attention_workers: a file of HOST:PORT entries re-read every "
          "--discovery_interval_ms, workers added and removed as it changes (docs/operations.md#scaling)");
ABSL_FLAG(std::string, attention_workers_dns, "",
          "instead of --attention_workers: NAME:PORT, NAME (the attention StatefulSet's headless Service) "
          "re-resolved every --discovery_interval_ms, one worker per address (docs/operations.md#scaling)");
ABSL_FLAG(double, discovery_interval_ms, 1000,
          "how often --attention_workers_file / --attention_workers_dns is re-read");
ABSL_FLAG(std::string, expert_workers, "",
          "expert workers H:P,... (their health is reported in moe_router_workers_ready)");
ABSL_FLAG(int, max_queued_requests, 256, "admission bound; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(double, load_poll_ms, 100, "interval of the attention workers' GetLoad polls");
ABSL_FLAG(std::string, api_keys_file, "",
          "require an API key (`authorization: Bearer KEY`) on every public call; the file has one "
          "`NAME KEY` per line and is re-read when it changes (docs/operations.md#api-keys)");
ABSL_FLAG(std::string, http_listen, "",
          "HOST:PORT of the OpenAI-compatible HTTP API (docs/http-api.md); empty: no HTTP API");
ABSL_FLAG(int, http_threads, 128, "HTTP API threads: each open connection (an SSE stream) holds one");
ABSL_FLAG(double, drain_seconds, 20, "on SIGTERM, how long open streams may finish");

int main(int argc, char** argv) {
  auto service = moe::rpc::ServiceMain::Init(
      argc, argv,
      {.binary = "moe-router",
       .role = "router",
       .usage =
           "moe-router: the cluster's public moe.v1.Generation API; places requests on attention workers.\n\n"
           "Usage: moe-router --model DIR (--attention_workers H:P,... | --attention_workers_file F | "
           "--attention_workers_dns NAME:PORT) [--expert_workers H:P,...] "
           "[--listen H:P] [--http_listen H:P] [--metrics_port M] [--api_keys_file F] "
           "[--public_tls_cert F --public_tls_key F] (--tls_ca F --tls_cert F --tls_key F | --insecure)",
       .public_listener = true});

  if (absl::GetFlag(FLAGS_model).empty()) return service->Fail("--model is required");
  const std::string workers_file = absl::GetFlag(FLAGS_attention_workers_file);
  const std::string workers_dns = absl::GetFlag(FLAGS_attention_workers_dns);
  const int worker_sources = (absl::GetFlag(FLAGS_attention_workers).empty() ? 0 : 1) +
                             (workers_file.empty() ? 0 : 1) + (workers_dns.empty() ? 0 : 1);
  if (worker_sources != 1) {
    return service->Fail(
        "exactly one of --attention_workers, --attention_workers_file and --attention_workers_dns is "
        "required");
  }
  if (!(absl::GetFlag(FLAGS_discovery_interval_ms) > 0))
    return service->Fail("--discovery_interval_ms must be > 0");
  auto attention = moe::rpc::ParseAddressList("attention_workers", absl::GetFlag(FLAGS_attention_workers));
  if (!attention.ok()) return service->Fail(attention.status().message());
  if (!absl::GetFlag(FLAGS_attention_workers).empty() && attention->empty())
    return service->Fail("--attention_workers: at least one HOST:PORT is required");
  if (!workers_dns.empty()) {
    if (absl::Status s = moe::router::ValidateDnsTarget(workers_dns); !s.ok())
      return service->Fail(s.message());
  }
  if (!workers_file.empty()) {
    auto read = moe::router::ReadWorkersFile(workers_file);
    if (!read.ok()) return service->Fail(read.status().message());
  }
  std::vector<std::string> experts;
  if (!absl::GetFlag(FLAGS_expert_workers).empty()) {
    auto parsed = moe::rpc::ParseAddressList("expert_workers", absl::GetFlag(FLAGS_expert_workers));
    if (!parsed.ok()) return service->Fail(parsed.status().message());
    experts = *parsed;
  }
  if (absl::GetFlag(FLAGS_max_queued_requests) < 1)
    return service->Fail("--max_queued_requests must be >= 1");
  if (!(absl::GetFlag(FLAGS_load_poll_ms) > 0)) return service->Fail("--load_poll_ms must be > 0");

  std::unique_ptr<moe::router::ApiKeyStore> api_keys;
  if (!absl::GetFlag(FLAGS_api_keys_file).empty()) {
    auto loaded = moe::router::ApiKeyStore::Load(absl::GetFlag(FLAGS_api_keys_file));
    if (!loaded.ok()) return service->Fail(loaded.status().message());
    api_keys = *std::move(loaded);
    LOG(INFO) << "API keys required: " << api_keys->num_keys() << " key(s) from "
              << absl::GetFlag(FLAGS_api_keys_file);
  } else {
    LOG(WARNING) << "no --api_keys_file: the public API accepts every caller";
  }

  moe::router::RouterMetrics metrics(moe::metrics::Registry());
  auto model = moe::router::ServedModel::Load(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_model_name));
  if (!model.ok()) return service->Fail(model.status());

  moe::router::AttentionWorkerPoolOptions options;
  options.max_queued_requests = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_requests));
  options.poll_interval = absl::Milliseconds(absl::GetFlag(FLAGS_load_poll_ms));
  options.credentials = service->client_credentials();
  const int num_experts = static_cast<int>(experts.size());
  moe::router::AttentionWorkerPool worker_pool(*attention, std::move(experts), options, &metrics);
  std::unique_ptr<moe::router::WorkerDiscovery> discovery;
  const absl::Duration discovery_interval = absl::Milliseconds(absl::GetFlag(FLAGS_discovery_interval_ms));
  if (!workers_file.empty()) {
    discovery = moe::router::WorkerDiscovery::FromFile(workers_file, discovery_interval, &worker_pool);
    // A bad file at start-up is an operator error; later ones keep the current set.
    if (absl::Status s = discovery->Refresh(); !s.ok()) return service->Fail(s.message());
  } else if (!workers_dns.empty()) {
    discovery = moe::router::WorkerDiscovery::FromDns(workers_dns, discovery_interval, &worker_pool);
    // The Service may have no ready pod yet: not ready until a later lookup finds one.
    discovery->Refresh().IgnoreError();
  }
  moe::router::GenerateService generate(model->get(), &worker_pool, &metrics, moe::router::RequestLimits{},
                                        num_experts);
  if (api_keys != nullptr) generate.RequireApiKeys(api_keys.get());
  if (absl::Status s = service->Serve({&generate}, moe::router::kMaxReceiveMessageBytes); !s.ok()) {
    return service->Fail(s);
  }
  std::atomic<bool> ready_now{false};
  std::unique_ptr<moe::router::openai::HttpServer> http;
  if (const std::string listen = absl::GetFlag(FLAGS_http_listen); !listen.empty()) {
    const moe::router::ServedModel* served = model->get();
    moe::router::openai::HttpServerOptions options;
    options.listen = listen;
    options.num_threads = absl::GetFlag(FLAGS_http_threads);
    options.model_name = served->name;
    options.ready = [&ready_now] { return ready_now.load(); };
    options.token_text = [served](int32_t id) { return served->tokenizer->Decode({&id, 1}); };
    options.tls_cert_file = moe::rpc::ServiceMain::public_tls_cert_file();
    options.tls_key_file = moe::rpc::ServiceMain::public_tls_key_file();
    auto started = moe::router::openai::HttpServer::Start(service->server()->InProcessChannel(), options);
    if (!started.ok()) return service->Fail(started.status());
    http = *std::move(started);
    LOG(INFO) << "OpenAI-compatible HTTP API on " << listen << " (port " << http->port() << ", "
              << (options.tls_cert_file.empty() ? "plain HTTP" : "HTTPS") << ")";
  }
  service->SetStarted();
  moe::rpc::ServiceMain* main_service = service.get();
  worker_pool.Start([main_service, &ready_now](bool ready) {
    ready_now = ready;
    main_service->SetReady(ready);
    LOG(INFO) << (ready ? "ready" : "not ready (no attention worker is ready)");
  });
  if (discovery != nullptr) discovery->Start();
  LOG(INFO) << "serving " << (*model)->name << " with " << worker_pool.num_workers() << " attention worker(s)"
            << (discovery != nullptr ? " (more or fewer as discovered)" : "");

  service->WaitForTerminationSignal();
  ready_now = false;  // /health answers 503 while the open streams drain
  service->server()->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_drain_seconds)));
  if (http != nullptr) http->Stop();  // after the gRPC drain ended its open streams' calls
  if (discovery != nullptr) discovery->Stop();
  worker_pool.Stop();
  return 0;
}
