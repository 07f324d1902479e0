# Tests for common/engine/sampler.cc and kv_cache_block_pool.cc; include()d from this folder's
# CMakeLists.txt. The sampler test reads testdata/sampler_transformers_cases.json (made by
# testdata/make_sampler_fixtures.py with torch) from $MOE_SOURCE_DIR.
moe_add_test(sampler_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/sampler_test.cc
  LIBS moe_engine nlohmann_json::nlohmann_json
  LABELS unit)
moe_add_test(kv_cache_block_pool_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/kv_cache_block_pool_test.cc
  LIBS moe_engine
  LABELS unit)
# Regenerates the transformers fixtures with torch and fails if the committed JSON is stale; skips
# (77) where torch 1.13 is not installed. Debian's /usr/bin/python3 is the one with torch here.
if(EXISTS /usr/bin/python3)
  set(_moe_sampler_python /usr/bin/python3)
else()
  set(_moe_sampler_python python3)
endif()
moe_add_script_test(sampler_fixtures_up_to_date
  COMMAND ${_moe_sampler_python}
          ${CMAKE_CURRENT_LIST_DIR}/testdata/make_sampler_fixtures.py --check
  LABELS unit)
