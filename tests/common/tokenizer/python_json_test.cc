#include "common/tokenizer/python_json.h"

#include "gtest/gtest.h"

namespace moe::tokenizer {
namespace {

TEST(PythonJsonTest, WritesLikePythonJsonDumpsWithoutAsciiEscaping) {
  // Expected: json.dumps(json.loads(src), ensure_ascii=False) in Python 3.
  const auto value = nlohmann::ordered_json::parse(
      R"({"name": "get_weather", "b": [1, 2.5, true, null, {}], "a": "é\n\"q\"\u0001\\"})");
  EXPECT_EQ(PythonJsonDumps(value),
            "{\"name\": \"get_weather\", \"b\": [1, 2.5, true, null, {}], "
            "\"a\": \"\u00e9\\n\\\"q\\\"\\u0001\\\\\"}");
}

TEST(PythonJsonTest, KeepsKeyOrderAndWritesEmptyContainers) {
  const auto value = nlohmann::ordered_json::parse(R"({"z": [], "a": {"y": 1, "b": -2}})");
  EXPECT_EQ(PythonJsonDumps(value), "{\"z\": [], \"a\": {\"y\": 1, \"b\": -2}}");
}

}  // namespace
}  // namespace moe::tokenizer
