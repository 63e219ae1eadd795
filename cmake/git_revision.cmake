# Run at every build (cmake -P): writes OUT, a source defining ab::build::git_revision(), with the
# checkout's HEAD and "+dirty" when tracked files differ from it. The file is rewritten only when
# its text changes, so an unchanged revision costs no rebuild. Run files record this revision, so
# it must be the commit the binary was built from, not the one CMake was configured at.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SRC}
                OUTPUT_VARIABLE rev OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
if(NOT rc EQUAL 0 OR NOT rev)
  set(rev "unknown")
else()
  execute_process(COMMAND git diff --quiet HEAD -- WORKING_DIRECTORY ${SRC} RESULT_VARIABLE dirty ERROR_QUIET)
  if(NOT dirty EQUAL 0)
    string(APPEND rev "+dirty")
  endif()
endif()
file(CONFIGURE OUTPUT ${OUT} CONTENT "// Generated at build time by cmake/git_revision.cmake.
namespace ab::build {
const char* git_revision() { return \"${rev}\"; }
}  // namespace ab::build
" @ONLY)
