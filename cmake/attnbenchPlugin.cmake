# attnbench_add_plugin(NAME SOURCES a.cpp [b.cpp ...])
# Builds NAME.so, a module that `attnbench --plugin NAME.so` (or ATTNBENCH_PLUGINS) loads. Its
# sources register variants and tasks with ATTNBENCH_REGISTER_VARIANT / ATTNBENCH_REGISTER_TASK,
# exactly as built-in sources do; the entry points the loader checks are added here.
function(attnbench_add_plugin name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  set(sources ${ARG_SOURCES} ${ARG_UNPARSED_ARGUMENTS})
  if(NOT sources)
    message(FATAL_ERROR "attnbench_add_plugin(${name}): give the plugin's sources, e.g. SOURCES ${name}.cpp")
  endif()
  add_library(${name} MODULE ${sources} ${ATTNBENCH_PLUGIN_ENTRY})
  target_link_libraries(${name} PRIVATE attnbench::attnbench)
  target_compile_definitions(${name} PRIVATE ATTNBENCH_PLUGIN)
  target_compile_features(${name} PRIVATE cxx_std_20)
  set_target_properties(${name} PROPERTIES PREFIX "" CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
endfunction()
