# The dependency layers of harness/layers.txt as OBJECT libraries (attnbench_<layer>) that the one
# shared library links. Each layer's include root (build/layers/<layer>/) holds links to its own
# folder and to the folders of the layers it may use, under the layer names, so `#include
# "train/train.hpp"` resolves in the layers above train and fails to compile below it.

# The SDK as plugins see it: harness/include/attnbench/, plus the public headers of the fused
# kernels, which live beside their sources in harness/kernels/ (so that adding a kernel touches one
# folder) and appear as attnbench/kernels/ through a link in the build tree and in the install.
set(ATTNBENCH_SDK_VIEW ${CMAKE_BINARY_DIR}/sdk)
file(MAKE_DIRECTORY ${ATTNBENCH_SDK_VIEW}/attnbench)
file(CREATE_LINK ${CMAKE_SOURCE_DIR}/harness/kernels ${ATTNBENCH_SDK_VIEW}/attnbench/kernels SYMBOLIC)
file(GLOB ATTNBENCH_KERNEL_HEADERS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/harness/kernels/*.hpp)

# What every layer compiles and links against (usage requirements only).
add_library(attnbench_layer_deps INTERFACE)
target_include_directories(attnbench_layer_deps INTERFACE ${CMAKE_SOURCE_DIR}/harness/include ${ATTNBENCH_SDK_VIEW}
                                                          ${CMAKE_BINARY_DIR}/generated)
target_link_libraries(attnbench_layer_deps INTERFACE nlohmann_json::nlohmann_json fmt::fmt DNNL::dnnl TBB::tbb
                      OpenMP::OpenMP_CXX PkgConfig::FFTW3F PkgConfig::SPNG ZLIB::ZLIB benchmark::benchmark
                      ${CMAKE_DL_LIBS})
target_compile_definitions(attnbench_layer_deps INTERFACE ATTNBENCH_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
if(ATTNBENCH_MPI)
  target_link_libraries(attnbench_layer_deps INTERFACE MPI::MPI_CXX)
  target_compile_definitions(attnbench_layer_deps INTERFACE ATTNBENCH_WITH_MPI)
endif()

set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/harness/layers.txt)
file(STRINGS ${CMAKE_SOURCE_DIR}/harness/layers.txt _layer_lines REGEX "^[a-z]+ [^ :]+:")
set(ATTNBENCH_LIBRARY_LAYERS "")
list(FILTER _layer_lines EXCLUDE REGEX "^sdk ")  # the public headers' layers: for the layering test
foreach(line IN LISTS _layer_lines)
  string(REGEX MATCH "^([a-z]+) ([^ :]+):(.*)$" _ "${line}")
  set(_name ${CMAKE_MATCH_1})
  set(ATTNBENCH_LAYER_DIR_${_name} ${CMAKE_SOURCE_DIR}/${CMAKE_MATCH_2})
  string(STRIP "${CMAKE_MATCH_3}" _below)
  separate_arguments(_below UNIX_COMMAND "${_below}")
  set(ATTNBENCH_LAYER_BELOW_${_name} ${_below})
  if(NOT _name STREQUAL "cli")
    list(APPEND ATTNBENCH_LIBRARY_LAYERS ${_name})
  endif()
endforeach()

# Adds the sources of `layer` to `target` with the layer's include root.
function(attnbench_layer_sources target layer)
  set(root ${CMAKE_BINARY_DIR}/layers/${layer})
  file(REMOVE_RECURSE ${root})
  file(MAKE_DIRECTORY ${root})
  foreach(dep IN LISTS ATTNBENCH_LAYER_BELOW_${layer} layer)  # `layer`: the layer itself
    file(CREATE_LINK ${ATTNBENCH_LAYER_DIR_${dep}} ${root}/${dep} SYMBOLIC)
  endforeach()
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS ${ATTNBENCH_LAYER_DIR_${layer}}/*.cpp)
  target_sources(${target} PRIVATE ${sources})
  target_include_directories(${target} PRIVATE ${root})
endfunction()

foreach(layer IN LISTS ATTNBENCH_LIBRARY_LAYERS)
  add_library(attnbench_${layer} OBJECT)
  attnbench_layer_sources(attnbench_${layer} ${layer})
  target_link_libraries(attnbench_${layer} PRIVATE attnbench_layer_deps $<BUILD_INTERFACE:attnbench_warnings>)
endforeach()
