// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it, which is what the
// `tojson` filter of transformers' chat templates produces: ", " and ": " separators, keys in the
// stored (insertion) order, non-ASCII characters unescaped.
#ifndef MOE_COMMON_TOKENIZER_PYTHON_JSON_H_
#define MOE_COMMON_TOKENIZER_PYTHON_JSON_H_

#include <string>

#include "nlohmann/json.hpp"

namespace moe::tokenizer {

// Serializes `value`. Numbers use nlohmann's shortest round-trip form, which matches Python's
// repr for integers and for the usual floats (1.5, 100.0, 1e+20). Thread-safe.
std::string PythonJsonDumps(const nlohmann::ordered_json& value);

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_PYTHON_JSON_H_
