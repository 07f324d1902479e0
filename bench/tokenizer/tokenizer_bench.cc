// Encode/decode throughput of the Qwen3 tokenizer on one thread.
// Usage: tokenizer_bench [CORPUS.jsonl] [--seconds S]
// CORPUS defaults to tests/oracle/tokenizer/corpus.jsonl (under $MOE_SOURCE_DIR or the cwd).
// Reports the first (cold BPE cache) pass separately from the steady state, since serving sees a
// warm cache for common words but cold pieces for new ones.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string corpus_path;
  double min_seconds = 2.0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      min_seconds = std::atof(argv[++i]);
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: tokenizer_bench [CORPUS.jsonl] [--seconds S]\n";
      return 0;
    } else {
      corpus_path = arg;
    }
  }
  if (corpus_path.empty()) {
    const char* source = std::getenv("MOE_SOURCE_DIR");
    corpus_path = std::string(source ? source : ".") + "/tests/oracle/tokenizer/corpus.jsonl";
  }
  std::ifstream in(corpus_path);
  if (!in) {
    std::cerr << "tokenizer_bench: cannot open " << corpus_path << "\n";
    return 1;
  }
  std::vector<std::string> texts;
  size_t bytes_per_pass = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("text") || !j["text"].is_string()) continue;
    texts.push_back(j["text"].get<std::string>());
    bytes_per_pass += texts.back().size();
  }
  if (texts.empty()) {
    std::cerr << "tokenizer_bench: no {\"text\"} lines in " << corpus_path << "\n";
    return 1;
  }

  const auto t_load0 = Clock::now();
  auto json = moe::tokenizer::EmbeddedQwen3TokenizerJson();
  const auto t_load1 = Clock::now();
  if (!json.ok()) {
    std::cerr << json.status() << "\n";
    return 1;
  }
  auto tok = moe::tokenizer::Tokenizer::FromJson(*json);
  const auto t_load2 = Clock::now();
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  std::cout << "load: gunzip " << Seconds(t_load0, t_load1) * 1e3 << " ms, parse "
            << Seconds(t_load1, t_load2) * 1e3 << " ms\n";
  std::cout << "corpus: " << texts.size() << " samples, " << bytes_per_pass << " bytes\n";

  auto encode_pass = [&](size_t* tokens) {
    std::vector<std::vector<int32_t>> all;
    for (const std::string& t : texts) {
      auto ids = (*tok)->Encode(t);
      if (!ids.ok()) {
        std::cerr << ids.status() << "\n";
        std::exit(1);
      }
      *tokens += ids->size();
      all.push_back(*std::move(ids));
    }
    return all;
  };

  size_t cold_tokens = 0;
  const auto c0 = Clock::now();
  const std::vector<std::vector<int32_t>> ids = encode_pass(&cold_tokens);
  const double cold = Seconds(c0, Clock::now());
  std::cout << "encode cold (first pass): " << bytes_per_pass / cold / 1e6 << " MB/s, " << cold_tokens / cold
            << " tokens/s\n";

  size_t tokens = 0, passes = 0;
  const auto w0 = Clock::now();
  double warm = 0;
  do {
    encode_pass(&tokens);
    ++passes;
    warm = Seconds(w0, Clock::now());
  } while (warm < min_seconds);
  std::cout << "encode warm (" << passes << " passes): " << passes * bytes_per_pass / warm / 1e6 << " MB/s, "
            << tokens / warm << " tokens/s\n";

  size_t decoded_bytes = 0;
  passes = 0;
  const auto d0 = Clock::now();
  double dec = 0;
  do {
    for (const auto& v : ids) decoded_bytes += (*tok)->Decode(v).size();
    ++passes;
    dec = Seconds(d0, Clock::now());
  } while (dec < min_seconds / 2);
  std::cout << "decode: " << decoded_bytes / dec / 1e6 << " MB/s, " << passes * cold_tokens / dec
            << " tokens/s\n";
  return 0;
}
