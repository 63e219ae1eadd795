// Readers for the LRA release files, see lra_loaders.hpp.
#include "io/lra_loaders.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "attnbench/params.hpp"

namespace ab::lra {

namespace fs = std::filesystem;

namespace {

// Whether `target` (both canonical) is `root` or lies below it.
bool inside(const fs::path& root, const fs::path& target) {
  const fs::path rel = target.lexically_relative(root);
  return !rel.empty() && *rel.begin() != "..";
}

// Where `p` leads once every symbolic link is followed (the part that does not exist yet is kept
// as written, normalised).
fs::path resolved(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p).lexically_normal() : r;
}

}  // namespace

std::vector<PathfinderItem> read_pathfinder_metadata(const std::string& contour_dir) {
  const fs::path root(contour_dir);
  const fs::path meta = root / "metadata";
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    throw UsageError(fmt::format("Pathfinder files: '{}' is not a directory (expected a contour directory such as "
                                 "lra_release/pathfinder32/curv_contour_length_14)",
                                 contour_dir));
  if (!fs::is_directory(meta, ec))
    throw UsageError(fmt::format("Pathfinder files: '{}' has no metadata/ directory", contour_dir));
  // metadata/<n>.npy in numeric order of n
  std::vector<std::pair<long, fs::path>> files;
  for (const auto& entry : fs::directory_iterator(meta, ec)) {
    if (!entry.is_regular_file()) continue;
    const fs::path p = entry.path();
    if (p.extension() != ".npy") continue;
    const std::string stem = p.stem().string();
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(stem.c_str(), &end, 10);
    if (stem.empty() || *end != '\0' || errno) continue;
    files.emplace_back(n, p);
  }
  if (files.empty()) throw UsageError(fmt::format("Pathfinder files: no <n>.npy files in '{}'", meta.string()));
  std::sort(files.begin(), files.end());
  const fs::path real_root = resolved(root);
  std::map<std::string, bool> dir_inside;  // per distinct subpath: does it resolve inside root?
  std::vector<PathfinderItem> items;
  for (const auto& [n, p] : files) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw UsageError(fmt::format("Pathfinder files: cannot read '{}'", p.string()));
    std::string line;
    int64_t line_no = 0;
    while (std::getline(f, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      if (line_no == 1 && line.rfind("\x93NUMPY", 0) == 0)
        throw UsageError(fmt::format("Pathfinder files: '{}' is a binary numpy file; the LRA release stores "
                                     "metadata as text lines, which is all this reader understands",
                                     p.string()));
      std::istringstream in(line);
      std::string sub, file, index, label;
      if (!(in >> sub >> file >> index >> label))
        throw UsageError(fmt::format("Pathfinder files: {}:{}: expected '<subpath> <filename> <index> <label> ...', "
                                     "got '{}'",
                                     p.string(), line_no, line));
      char* end = nullptr;
      const double v = std::strtod(label.c_str(), &end);
      if (*end != '\0' || (v != 0.0 && v != 1.0))
        throw UsageError(fmt::format("Pathfinder files: {}:{}: label '{}' is not 0 or 1", p.string(), line_no, label));
      // The paths are relative to the contour directory and stay in it: no absolute path, no '..'
      // past its top, no subpath through a symbolic link to elsewhere (checked once per subpath).
      const fs::path rel = (fs::path(sub) / file).lexically_normal();
      if (fs::path(sub).is_absolute() || fs::path(file).is_absolute() || rel.empty() || *rel.begin() == ".." ||
          rel.filename().empty())
        throw UsageError(fmt::format("Pathfinder files: {}:{}: the image path '{}/{}' leaves the contour directory "
                                     "'{}'; the metadata's paths must be relative to it and stay inside (no absolute "
                                     "path, no '..' above it)",
                                     p.string(), line_no, sub, file, contour_dir));
      auto [it, fresh] = dir_inside.try_emplace(sub, true);
      if (fresh) it->second = inside(real_root, resolved(root / sub));
      if (!it->second)
        throw UsageError(fmt::format("Pathfinder files: {}:{}: the subpath '{}' resolves to '{}', outside the contour "
                                     "directory '{}' (a symbolic link); copy the images in, or give path= the "
                                     "directory that holds them",
                                     p.string(), line_no, sub, resolved(root / sub).string(), contour_dir));
      items.push_back({(root / rel).string(), static_cast<int>(v)});
    }
  }
  if (items.empty()) throw UsageError(fmt::format("Pathfinder files: the metadata in '{}' lists no images", meta.string()));
  return items;
}

GrayImage read_pathfinder_image(const std::string& contour_dir, const std::string& image, int64_t max_side) {
  std::error_code ec;
  if (fs::is_symlink(image, ec)) {
    const fs::path target = resolved(image);
    if (!inside(resolved(contour_dir), target))
      throw UsageError(fmt::format("Pathfinder files: '{}' is a symbolic link to '{}', outside the contour directory "
                                   "'{}'; copy the image in, or give path= the directory that holds the images",
                                   image, target.string(), contour_dir));
  }
  return read_png_gray(image, max_side);
}

AanPair parse_aan_line(const std::string& raw) {
  std::string line = raw;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::vector<std::string> cols;
  size_t start = 0;
  for (;;) {
    const size_t tab = line.find('\t', start);
    if (tab == std::string::npos) {
      cols.push_back(line.substr(start));
      break;
    }
    cols.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
  if (cols.size() != 5)
    throw std::runtime_error(fmt::format("expected 5 tab-separated columns (label, id1, id2, text1, text2), got {}",
                                         cols.size()));
  char* end = nullptr;
  const double v = std::strtod(cols[0].c_str(), &end);
  if (cols[0].empty() || *end != '\0' || (v != 0.0 && v != 1.0))
    throw std::runtime_error(fmt::format("label '{}' is not 0 or 1", cols[0]));
  return {static_cast<int>(v), cols[1], cols[2], cols[3], cols[4]};
}

AanFile::AanFile(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError(fmt::format("AAN files: cannot read '{}'", path));
  std::string line;
  uint64_t pos = 0;
  int64_t line_no = 0;
  while (std::getline(f, line)) {
    ++line_no;
    const uint64_t here = pos;
    pos += line.size() + 1;
    if (line.empty() || line == "\r") continue;
    if (offsets_.size() < 3) {  // check the first lines now, so a wrong file fails at once
      try {
        parse_aan_line(line);
      } catch (const std::runtime_error& e) {
        throw UsageError(fmt::format("AAN files: {}:{}: {}", path, line_no, e.what()));
      }
    }
    offsets_.push_back(here);
  }
  if (offsets_.empty()) throw UsageError(fmt::format("AAN files: '{}' has no pairs", path));
}

AanPair AanFile::read(int64_t i) const {
  if (i < 0 || i >= size()) throw std::out_of_range(fmt::format("AAN file '{}': pair {} out of range", path_, i));
  std::ifstream f(path_, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("AAN files: cannot read '{}'", path_));
  f.seekg(static_cast<std::streamoff>(offsets_[static_cast<size_t>(i)]));
  std::string line;
  std::getline(f, line);
  try {
    return parse_aan_line(line);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("AAN files: {} pair {}: {}", path_, i, e.what()));
  }
}

}  // namespace ab::lra
