// Checks the /metrics of a running local cluster (router, 1 attention worker, 2 expert workers; tiny
// bf16 model) against the metric contract deploy/metrics/catalog.txt after a few Generate requests:
// `promtool check metrics` is clean, every service exports exactly the catalogue's always-on
// families for its role (types, label names, histogram buckets), and the traffic shows up in the
// router's latency histograms and token counters and in the expert workers' token counters.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moe/v1/generate.grpc.pb.h"
#include "tests/integration/local_cluster.h"
#include "tests/services/process_helper.h"
#include "tests/util/http_get.h"
#include "tests/util/test_models.h"

namespace moe {
namespace {

using ::moe::testing::HttpGet;

std::string SourceDir() {
  const char* env = std::getenv("MOE_SOURCE_DIR");
  return env != nullptr ? env : MOE_SOURCE_DIR_DEFAULT;
}

// ---- the catalogue --------------------------------------------------------------------------

struct CatalogEntry {
  std::string name;
  std::string type;  // counter, gauge, histogram
  std::vector<std::string> labels;
  std::vector<double> buckets;  // histograms only, without +Inf
  std::string when;             // "always" or a flag
  std::string section;          // "every", "router", "attention", "expert"
};

// Parses catalog.txt: sections start with a "# ---- <who> ----" comment, entries are
// "name | type | labels | buckets | when | help".
absl::StatusOr<std::vector<CatalogEntry>> LoadCatalog(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<CatalogEntry> entries;
  std::string section;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (absl::StartsWith(line, "# ----")) {
      if (absl::StrContains(line, "every service"))
        section = "every";
      else if (absl::StrContains(line, "router"))
        section = "router";
      else if (absl::StrContains(line, "attention worker"))
        section = "attention";
      else if (absl::StrContains(line, "expert worker"))
        section = "expert";
      else
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": unknown section ", line));
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> fields = absl::StrSplit(line, " | ");
    if (fields.size() != 6) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": expected 6 fields, got ", fields.size()));
    }
    if (section.empty())
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": entry before a section"));
    CatalogEntry e;
    e.name = fields[0];
    e.type = fields[1];
    if (fields[2] != "-") e.labels = absl::StrSplit(fields[2], ',');
    if (fields[3] != "-") {
      for (absl::string_view b : absl::StrSplit(fields[3], ',')) {
        double v = 0;
        if (!absl::SimpleAtod(b, &v))
          return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": bad bucket ", b));
        e.buckets.push_back(v);
      }
    }
    e.when = fields[4];
    e.section = section;
    std::sort(e.labels.begin(), e.labels.end());
    entries.push_back(std::move(e));
  }
  return entries;
}

// The always-on catalogue entries a service of `role` must export.
std::map<std::string, CatalogEntry> Expected(const std::vector<CatalogEntry>& catalog,
                                             const std::string& role) {
  std::map<std::string, CatalogEntry> out;
  for (const CatalogEntry& e : catalog) {
    if (e.when == "always" && (e.section == "every" || e.section == role)) out[e.name] = e;
  }
  return out;
}

// ---- the exposition text ----------------------------------------------------------------------

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> type from "# TYPE"
  std::vector<Sample> samples;
};

absl::StatusOr<Exposition> ParseExposition(const std::string& text) {
  Exposition out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 4 && parts[1] == "TYPE") out.types[parts[2]] = parts[3];
      continue;
    }
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          return absl::InvalidArgumentError(absl::StrCat("bad labels in: ", line));
        }
        const std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value += line[j];
        }
        if (j >= line.size())
          return absl::InvalidArgumentError(absl::StrCat("unterminated label in: ", line));
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return absl::InvalidArgumentError(absl::StrCat("unterminated labels in: ", line));
      ++i;
    }
    std::vector<std::string> rest = absl::StrSplit(line.substr(i), ' ', absl::SkipEmpty());
    if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("no value in: ", line));
    if (rest[0] == "Nan" || rest[0] == "NaN") {
      s.value = std::nan("");
    } else if (!absl::SimpleAtod(rest[0], &s.value)) {
      return absl::InvalidArgumentError(absl::StrCat("bad value in: ", line));
    }
    out.samples.push_back(std::move(s));
  }
  return out;
}

// The family a sample belongs to, given the declared types (histogram samples carry suffixes).
std::string FamilyOf(const Exposition& e, const std::string& sample) {
  if (e.types.count(sample)) return sample;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    if (absl::EndsWith(sample, suffix)) {
      const std::string base = sample.substr(0, sample.size() - std::string(suffix).size());
      auto it = e.types.find(base);
      if (it != e.types.end() && (it->second == "histogram" || it->second == "summary")) return base;
    }
  }
  return sample;
}

// Compares the moe_* families of `e` with `expected`; returns one line per problem.
std::vector<std::string> CheckAgainstCatalog(const Exposition& e,
                                             const std::map<std::string, CatalogEntry>& expected) {
  std::vector<std::string> problems;
  std::set<std::string> exported;
  for (const auto& [name, type] : e.types) {
    if (!absl::StartsWith(name, "moe_")) continue;
    exported.insert(name);
    auto it = expected.find(name);
    if (it == expected.end()) {
      problems.push_back(absl::StrCat("extra family ", name));
      continue;
    }
    if (type != it->second.type)
      problems.push_back(absl::StrCat(name, ": type ", type, ", catalogue says ", it->second.type));
  }
  for (const auto& [name, entry] : expected) {
    if (!exported.count(name)) problems.push_back(absl::StrCat("missing family ", name));
  }
  // Per family: label names of every sample, and per histogram series its bucket bounds.
  std::map<std::string, int> samples_per_family;
  std::map<std::string, std::vector<double>> bounds_per_series;  // "family{labels}" -> le values in order
  for (const Sample& s : e.samples) {
    const std::string family = FamilyOf(e, s.name);
    auto it = expected.find(family);
    if (it == expected.end()) {
      if (absl::StartsWith(s.name, "moe_"))
        problems.push_back(absl::StrCat("sample of an undeclared or extra family: ", s.name));
      continue;
    }
    ++samples_per_family[family];
    std::vector<std::string> names;
    std::string series = family + "{";
    for (const auto& [k, v] : s.labels) {
      if (k == "le" && s.name == family + "_bucket") continue;
      names.push_back(k);
      absl::StrAppend(&series, k, "=", v, ",");
    }
    if (names != it->second.labels) {
      problems.push_back(absl::StrCat(s.name, ": labels {", absl::StrJoin(names, ","), "}, catalogue says {",
                                      absl::StrJoin(it->second.labels, ","), "}"));
    }
    if (it->second.type == "histogram" && s.name == family + "_bucket") {
      auto le = s.labels.find("le");
      double bound = 0;
      if (le == s.labels.end()) {
        problems.push_back(absl::StrCat(s.name, ": bucket without le"));
      } else if (le->second == "+Inf") {
        bounds_per_series[series].push_back(INFINITY);
      } else if (absl::SimpleAtod(le->second, &bound)) {
        bounds_per_series[series].push_back(bound);
      } else {
        problems.push_back(absl::StrCat(s.name, ": bad le ", le->second));
      }
    }
  }
  for (const auto& [name, entry] : expected) {
    if (exported.count(name) && samples_per_family[name] == 0)
      problems.push_back(absl::StrCat(name, ": declared but no sample"));
    if (entry.type != "histogram") continue;
    std::vector<double> want = entry.buckets;
    want.push_back(INFINITY);
    for (const auto& [series, bounds] : bounds_per_series) {
      if (!absl::StartsWith(series, name + "{")) continue;
      if (bounds != want) {
        problems.push_back(absl::StrCat(series, "}: ", bounds.size(), " buckets ", absl::StrJoin(bounds, ","),
                                        "; catalogue says ", absl::StrJoin(want, ",")));
      }
    }
  }
  return problems;
}

double Sum(const Exposition& e, const std::string& name) {
  double total = 0;
  for (const Sample& s : e.samples) {
    if (s.name == name) total += s.value;
  }
  return total;
}

std::vector<const Sample*> Find(const Exposition& e, const std::string& name) {
  std::vector<const Sample*> out;
  for (const Sample& s : e.samples) {
    if (s.name == name) out.push_back(&s);
  }
  return out;
}

// ---- HTTP and promtool ----------------------------------------------------------------------------

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// Path of promtool, installing Debian's prometheus package with deploy/tests/install_tools.sh when
// it is missing; empty if it cannot be had.
std::string Promtool() {
  auto which = RunCommand("command -v promtool");
  if (which.exit_code != 0) {
    RunCommand(SourceDir() + "/deploy/tests/install_tools.sh");
    which = RunCommand("command -v promtool");
  }
  if (which.exit_code != 0) return "";
  return std::string(absl::StripTrailingAsciiWhitespace(which.output));
}

// ---- the cluster ----------------------------------------------------------------------------------

constexpr int kExpertWorkers = 2;
constexpr int kAttentionWorkers = 1;
constexpr int kRequests = 4;
constexpr int kMaxNew = 6;

struct Service {
  std::string name;  // child name in the state dir
  std::string role;  // catalogue section
  std::string build_info_service;
  int metrics_port = 0;
};

class MetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ =
        testing::LocalCluster::Start(testing::TestModelDir("tiny", "bf16"), kAttentionWorkers, kExpertWorkers)
            .release();
    if (cluster_ == nullptr) return;
    // moectl cluster up: metrics ports from router port + 1000, expert workers first, then
    // attention workers, then the router (tools/moectl/cluster_command.cc).
    int router_port = 0;
    const std::string& router = cluster_->router();
    if (!absl::SimpleAtoi(router.substr(router.rfind(':') + 1), &router_port)) return;
    int next = router_port + 1000;
    services_ = new std::vector<Service>();
    for (int i = 0; i < kExpertWorkers; ++i)
      services_->push_back({absl::StrCat("expert-", i), "expert", "expert_worker", next++});
    for (int i = 0; i < kAttentionWorkers; ++i) {
      services_->push_back({absl::StrCat("attention-", i), "attention", "attention_worker", next++});
    }
    services_->push_back({"router", "router", "router", next++});
    auto stub = v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
    for (int r = 0; r < kRequests; ++r) {
      v1::GenerateRequest request;
      for (int t = 0; t < 3 + r; ++t) request.mutable_token_ids()->add_ids(100 + 37 * r + 11 * t);
      request.mutable_sampling()->set_temperature(0.0f);
      request.mutable_sampling()->set_max_new_tokens(kMaxNew);
      request.mutable_sampling()->set_ignore_eos(true);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto reader = stub->Generate(&ctx, request);
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
      }
      const grpc::Status status = reader->Finish();
      if (!status.ok())
        std::cerr << "Generate " << r << " failed: " << status.error_message() << std::endl;
      else
        ++requests_ok_;
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;  // moectl cluster down: stops every child
    cluster_ = nullptr;
    delete services_;
    services_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr) << "the local cluster did not come up";
    ASSERT_NE(services_, nullptr);
    ASSERT_EQ(requests_ok_, kRequests) << cluster_->Logs();
  }

  static absl::StatusOr<Exposition> Scrape(const Service& s, std::string* text = nullptr) {
    auto body = HttpGet(s.metrics_port, "/metrics");
    if (!body.ok()) return body.status();
    if (text != nullptr) *text = *body;
    return ParseExposition(*body);
  }

  static testing::LocalCluster* cluster_;
  static std::vector<Service>* services_;
  static int requests_ok_;
};

testing::LocalCluster* MetricsTest::cluster_ = nullptr;
std::vector<Service>* MetricsTest::services_ = nullptr;
int MetricsTest::requests_ok_ = 0;

TEST_F(MetricsTest, EveryServicePassesPromtoolCheckMetrics) {
  const std::string promtool = Promtool();
  if (promtool.empty()) GTEST_SKIP() << "promtool (Debian package prometheus) cannot be installed";
  const std::string dir = testing::MakeTempDir("moe-metrics");
  for (const Service& s : *services_) {
    SCOPED_TRACE(s.name);
    std::string text;
    auto exposition = Scrape(s, &text);
    ASSERT_TRUE(exposition.ok()) << exposition.status();
    const std::string file = absl::StrCat(dir, "/", s.name, ".txt");
    std::ofstream(file) << text;
    const CommandResult check = RunCommand(absl::StrCat(promtool, " check metrics < ", file));
    EXPECT_EQ(check.exit_code, 0) << check.output;
    // Lint problems are printed (and, depending on the version, not always reflected in the exit code).
    EXPECT_EQ(std::string(absl::StripAsciiWhitespace(check.output)), "") << "promtool on " << s.name;
  }
}

TEST_F(MetricsTest, EachServiceExportsExactlyTheCatalogue) {
  auto catalog = LoadCatalog(SourceDir() + "/deploy/metrics/catalog.txt");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  for (const Service& s : *services_) {
    SCOPED_TRACE(s.name);
    auto exposition = Scrape(s);
    ASSERT_TRUE(exposition.ok()) << exposition.status();
    const std::vector<std::string> problems = CheckAgainstCatalog(*exposition, Expected(*catalog, s.role));
    EXPECT_TRUE(problems.empty()) << s.name << ":\n  " << absl::StrJoin(problems, "\n  ");
    // The every-service metrics say which service this is and that it is ready.
    const auto build_info = Find(*exposition, "moe_build_info");
    ASSERT_EQ(build_info.size(), 1u);
    EXPECT_EQ(build_info[0]->labels.at("service"), s.build_info_service);
    EXPECT_EQ(build_info[0]->labels.at("backend"), "cpu");
    // Built from a git checkout (CI clones the repository): the revision is git's, not the fallback.
    EXPECT_NE(build_info[0]->labels.at("revision"), "unknown");
    EXPECT_EQ(build_info[0]->value, 1.0);
    EXPECT_EQ(Sum(*exposition, "moe_ready"), 1.0);
  }
}

TEST_F(MetricsTest, RequestsShowInRouterAttentionAndExpertMetrics) {
  const Service* router = nullptr;
  const Service* attention = nullptr;
  std::vector<const Service*> experts;
  for (const Service& s : *services_) {
    if (s.role == "router") router = &s;
    if (s.role == "attention") attention = &s;
    if (s.role == "expert") experts.push_back(&s);
  }
  ASSERT_NE(router, nullptr);
  ASSERT_NE(attention, nullptr);
  // Counters are updated as the final message is sent: poll until the router has seen them all.
  absl::StatusOr<Exposition> r = absl::UnavailableError("not scraped");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    r = Scrape(*router);
    ASSERT_TRUE(r.ok()) << r.status();
    if (Sum(*r, "moe_router_request_duration_seconds_count") >= kRequests) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(Sum(*r, "moe_router_time_to_first_token_seconds_count"), kRequests);
  EXPECT_EQ(Sum(*r, "moe_router_request_duration_seconds_count"), kRequests);
  EXPECT_EQ(Sum(*r, "moe_router_time_per_output_token_seconds_count"), kRequests);
  EXPECT_EQ(Sum(*r, "moe_router_inter_token_latency_seconds_count"), kRequests * (kMaxNew - 1));
  EXPECT_GT(Sum(*r, "moe_router_time_to_first_token_seconds_sum"), 0.0);
  EXPECT_EQ(Sum(*r, "moe_router_generation_tokens_total"), kRequests * kMaxNew);
  int prompt_tokens = 0;
  for (int i = 0; i < kRequests; ++i) prompt_tokens += 3 + i;
  EXPECT_EQ(Sum(*r, "moe_router_prompt_tokens_total"), prompt_tokens);
  bool found_ok_length = false;
  for (const Sample* s : Find(*r, "moe_router_requests_total")) {
    if (s->labels.at("finish_reason") == "length" && s->labels.at("code") == "OK") {
      found_ok_length = true;
      EXPECT_EQ(s->value, kRequests);
    }
  }
  EXPECT_TRUE(found_ok_length) << "no moe_router_requests_total{finish_reason=\"length\",code=\"OK\"}";
  EXPECT_EQ(Sum(*r, "moe_router_rejections_total"), 0.0);
  EXPECT_EQ(Sum(*r, "moe_router_requests_running"), 0.0);
  EXPECT_EQ(Sum(*r, "moe_router_requests_waiting"), 0.0);
  for (const char* name : {"moe_router_workers_ready", "moe_router_workers_expected"}) {
    for (const Sample* s : Find(*r, name)) {
      if (s->labels.at("role") == "attention_worker") {
        EXPECT_EQ(s->value, kAttentionWorkers) << name;
      } else if (s->labels.at("role") == "expert_worker") {
        EXPECT_EQ(s->value, kExpertWorkers) << name;
      }
    }
  }

  // The attention worker ran every prompt token once (prefill) and every generated token but the
  // last one of each request (decode feeds back the previous token).
  auto a = Scrape(*attention);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_GT(Sum(*a, "moe_attention_steps_total"), 0.0);
  EXPECT_EQ(Sum(*a, "moe_attention_step_batch_tokens_sum"), prompt_tokens + kRequests * (kMaxNew - 1));
  EXPECT_EQ(Sum(*a, "moe_attention_kv_cache_usage_ratio"), 0.0);
  EXPECT_EQ(Sum(*a, "moe_attention_kv_cache_free_blocks"), Sum(*a, "moe_attention_kv_cache_blocks"));

  // Every expert worker computed tokens, and each layer that saw tokens has a balance in (0, 1].
  for (const Service* e : experts) {
    SCOPED_TRACE(e->name);
    auto x = Scrape(*e);
    ASSERT_TRUE(x.ok()) << x.status();
    EXPECT_GT(Sum(*x, "moe_expert_tokens_total"), 0.0);
    EXPECT_GT(Sum(*x, "moe_expert_rounds_total"), 0.0);
    EXPECT_GT(Sum(*x, "moe_expert_bytes_received_total"), 0.0);
    EXPECT_GT(Sum(*x, "moe_expert_bytes_sent_total"), 0.0);
    std::map<std::string, double> tokens_by_layer;
    for (const Sample* s : Find(*x, "moe_expert_tokens_total"))
      tokens_by_layer[s->labels.at("layer")] = s->value;
    for (const Sample* s : Find(*x, "moe_expert_load_balance_ratio")) {
      const std::string& layer = s->labels.at("layer");
      if (tokens_by_layer[layer] > 0) {
        EXPECT_GT(s->value, 0.0) << "layer " << layer;
        EXPECT_LE(s->value, 1.0) << "layer " << layer;
      }
    }
  }
}

// With --per_expert_metrics an expert worker adds exactly the flag-gated per-expert family, one
// series per (MoE layer, hosted expert), labelled with the global expert index.
TEST(PerExpertMetricsTest, FlagAddsOneSeriesPerLayerAndHostedExpert) {
  auto catalog = LoadCatalog(SourceDir() + "/deploy/metrics/catalog.txt");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  const int metrics_port = testing::FreePort();
  const std::string listen = testing::LocalAddress(testing::FreePort());
  const std::string log = testing::MakeTempDir("moe-per-expert") + "/expert.log";
  auto child = testing::ChildProcess::Start(
      testing::BinaryPath("moe-expert-worker"),
      {"--model=" + testing::TestModelDir("tiny", "bf16"), "--rank=1", "--num_expert_workers=2",
       "--listen=" + listen, absl::StrCat("--metrics_port=", metrics_port), "--per_expert_metrics",
       "--insecure"},
      log);
  ASSERT_TRUE(child.ok()) << child.status();
  const absl::Status ready =
      testing::WaitForHealth(listen, "readiness", true, absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(ready.ok()) << ready << "\n" << (*child)->Log();
  auto body = HttpGet(metrics_port, "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  auto e = ParseExposition(*body);
  ASSERT_TRUE(e.ok()) << e.status();

  std::map<std::string, CatalogEntry> expected = Expected(*catalog, "expert");
  for (const CatalogEntry& entry : *catalog) {
    if (entry.when == "--per_expert_metrics") expected[entry.name] = entry;
  }
  ASSERT_TRUE(expected.count("moe_expert_expert_tokens_total"));
  const std::vector<std::string> problems = CheckAgainstCatalog(*e, expected);
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");

  const double hosted = Sum(*e, "moe_expert_hosted_experts");
  const size_t layers = Find(*e, "moe_expert_tokens_total").size();
  ASSERT_GT(hosted, 0.0);
  ASSERT_GT(layers, 0u);
  std::set<int> experts;
  std::set<std::string> layer_labels;
  const auto series = Find(*e, "moe_expert_expert_tokens_total");
  for (const Sample* s : series) {
    int expert = -1;
    ASSERT_TRUE(absl::SimpleAtoi(s->labels.at("expert"), &expert)) << s->labels.at("expert");
    experts.insert(expert);
    layer_labels.insert(s->labels.at("layer"));
    EXPECT_EQ(s->value, 0.0);
  }
  EXPECT_EQ(series.size(), layers * static_cast<size_t>(hosted));
  EXPECT_EQ(layer_labels.size(), layers);
  // Rank 1 of 2 hosts the upper half of the experts: global indices [hosted, 2 * hosted).
  ASSERT_EQ(experts.size(), static_cast<size_t>(hosted));
  EXPECT_EQ(*experts.begin(), static_cast<int>(hosted));
  EXPECT_EQ(*experts.rbegin(), static_cast<int>(2 * hosted) - 1);
}

// The checker itself must catch a missing family, an extra one, a wrong label and wrong buckets.
TEST(MetricsCatalogCheckTest, ReportsMissingExtraLabelAndBucketProblems) {
  std::map<std::string, CatalogEntry> expected;
  expected["moe_a_total"] = {"moe_a_total", "counter", {"reason"}, {}, "always", "router"};
  expected["moe_b_seconds"] = {"moe_b_seconds", "histogram", {}, {0.5, 1}, "always", "router"};
  expected["moe_c"] = {"moe_c", "gauge", {}, {}, "always", "router"};
  const std::string text =
      "# TYPE moe_a_total counter\n"
      "moe_a_total{code=\"OK\"} 1\n"
      "# TYPE moe_b_seconds histogram\n"
      "moe_b_seconds_bucket{le=\"0.5\"} 1\n"
      "moe_b_seconds_bucket{le=\"+Inf\"} 2\n"
      "moe_b_seconds_sum 3\n"
      "moe_b_seconds_count 2\n"
      "# TYPE moe_extra gauge\n"
      "moe_extra 1\n"
      "# TYPE exposer_scrapes_total counter\n"
      "exposer_scrapes_total 4\n";
  auto e = ParseExposition(text);
  ASSERT_TRUE(e.ok()) << e.status();
  const std::vector<std::string> problems = CheckAgainstCatalog(*e, expected);
  const std::string all = absl::StrJoin(problems, "\n");
  EXPECT_EQ(problems.size(), 5u) << all;
  EXPECT_TRUE(absl::StrContains(all, "extra family moe_extra")) << all;
  EXPECT_TRUE(absl::StrContains(all, "missing family moe_c")) << all;
  EXPECT_TRUE(absl::StrContains(all, "moe_a_total: labels {code}, catalogue says {reason}")) << all;
  EXPECT_TRUE(absl::StrContains(all, "moe_b_seconds{}: 2 buckets 0.5,inf; catalogue says 0.5,1,inf")) << all;
  EXPECT_TRUE(absl::StrContains(all, "sample of an undeclared or extra family: moe_extra")) << all;

  // A correct exposition has no problem.
  const std::string good =
      "# TYPE moe_a_total counter\nmoe_a_total{reason=\"x\"} 1\n"
      "# TYPE moe_b_seconds histogram\nmoe_b_seconds_bucket{le=\"0.5\"} 1\nmoe_b_seconds_bucket{le=\"1\"} 1\n"
      "moe_b_seconds_bucket{le=\"+Inf\"} 2\nmoe_b_seconds_sum 3\nmoe_b_seconds_count 2\n"
      "# TYPE moe_c gauge\nmoe_c Nan\n";
  auto g = ParseExposition(good);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(absl::StrJoin(CheckAgainstCatalog(*g, expected), "\n"), "");
}

TEST(MetricsCatalogCheckTest, CatalogueSectionsCoverEveryRole) {
  auto catalog = LoadCatalog(SourceDir() + "/deploy/metrics/catalog.txt");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  std::map<std::string, int> per_section;
  for (const CatalogEntry& e : *catalog) {
    ++per_section[e.section];
    if (e.type == "histogram")
      EXPECT_FALSE(e.buckets.empty()) << e.name;
    else
      EXPECT_TRUE(e.buckets.empty()) << e.name;
  }
  EXPECT_EQ(per_section["every"], 3);
  EXPECT_GT(per_section["router"], 0);
  EXPECT_GT(per_section["attention"], 0);
  EXPECT_GT(per_section["expert"], 0);
  // The flag-gated metrics: the per-expert counter and the per-API-key counter.
  for (const CatalogEntry& e : *catalog) {
    if (e.when != "always") {
      EXPECT_TRUE(e.name == "moe_expert_expert_tokens_total" || e.name == "moe_router_api_key_requests_total")
          << e.name;
    }
  }
}

}  // namespace
}  // namespace moe
