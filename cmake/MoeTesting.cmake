# A binary that may be asked for --device cuda loads lib/libmoe_cuda_backend.so at run time
# (common/engine/compute/cuda_backend_plugin.h): make sure it is built with the binary.
function(moe_depends_on_cuda_backend target)
  if(MOE_HAVE_CUDA)
    add_dependencies(${target} moe_cuda_backend_plugin)
  endif()
endfunction()

# moe_add_test(NAME SOURCES a.cc b.cc LIBS lib... LABELS unit|integration|oracle|gpu [TIMEOUT s])
# The one helper that registers every test with CTest, with a label.
find_package(GTest REQUIRED)
include(GoogleTest)

# The test targets over the threaded parts (transports, expert blocks switching into huge pages while
# they serve, expert round serving and embedded experts,
# the dispatcher's split of a round's wait, the thread pool, the attention worker's step loop, the
# expert worker, the router's admission queue). Not engine_test (its threads are the ones embedded_experts_test covers, and its forward
# passes take minutes under TSan), nor the router's single-threaded units (each loads the real
# tokenizer, a minute under TSan), nor router_generate_service_test: its threads are gRPC's, and
# Debian's gRPC is not built with TSan, so every report there was inside gRPC's own hand-offs. Their label gets
# the suffix `-threaded` (`unit-threaded`: one label, because gtest_discover_tests flattens a list of
# labels into separate properties), which `ctest -L unit` and `ctest -L threaded` both match (-L is
# a regular expression). The target moe_threaded_tests builds them all: the ThreadSanitizer pass of
# scripts/test.sh builds only that target and runs `ctest -L threaded`.
set(MOE_THREADED_TEST_TARGETS
    "^(transport|tagged_inbox|ucx_transport|nccl_transport|expert_block|expert_shard_server|moe_dispatch|embedded_experts|kernels_cpu|attention_worker|expert_worker|router_admission)_test$")
if(NOT TARGET moe_threaded_tests)
  add_custom_target(moe_threaded_tests)
endif()

function(moe_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(name MATCHES "${MOE_THREADED_TEST_TARGETS}")
    list(TRANSFORM ARG_LABELS APPEND "-threaded")
    add_dependencies(moe_threaded_tests ${name})
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  moe_depends_on_cuda_backend(${name})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  # Also compiled in, so a test binary run by hand finds them without the environment.
  target_compile_definitions(${name} PRIVATE MOE_SOURCE_DIR_DEFAULT="${CMAKE_SOURCE_DIR}"
                                             MOE_BINARY_DIR_DEFAULT="${CMAKE_BINARY_DIR}")
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
               ENVIRONMENT "MOE_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    DISCOVERY_TIMEOUT 60)
endfunction()

# moe_add_script_test(NAME COMMAND cmd args... LABELS label... [TIMEOUT s] [DEPENDS target...])
# Registers a non-gtest test (a shell or Python script) with a label. The command runs from the
# source dir with MOE_SOURCE_DIR/MOE_BINARY_DIR set; exit 0 is a pass, 77 a skip.
function(moe_add_script_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "COMMAND;LABELS;DEPENDS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_test(NAME ${name} COMMAND ${ARG_COMMAND} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
    SKIP_RETURN_CODE 77
    ENVIRONMENT "MOE_SOURCE_DIR=${CMAKE_SOURCE_DIR};MOE_BINARY_DIR=${CMAKE_BINARY_DIR}")
endfunction()
