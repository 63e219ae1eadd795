#pragma once
// One function per subcommand: argv[first] is the first word after the subcommand's name.
// Each returns the process exit code (0 ok, 1 failure) and throws UsageError for bad input (2).
namespace ab::cli {
int cmd_list(int argc, char** argv, int first);
int cmd_describe(int argc, char** argv, int first);
int cmd_check(int argc, char** argv, int first);
int cmd_train(int argc, char** argv, int first);
int cmd_data(int argc, char** argv, int first);
int cmd_bench(int argc, char** argv, int first);
int cmd_sweep(int argc, char** argv, int first);
int cmd_report(int argc, char** argv, int first);
int cmd_compare(int argc, char** argv, int first);
}  // namespace ab::cli
