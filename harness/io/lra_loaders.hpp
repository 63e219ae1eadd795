#pragma once
// Readers for the files of the Long Range Arena release (`lra_release.gz`), for users who have it:
// tasks switch to them with `source=lra_files` and `path=...`. Nothing is downloaded.
//
// Pathfinder: a contour directory such as `lra_release/pathfinder32/curv_contour_length_14/` with
//   metadata/<n>.npy  text lines (despite the extension, as LRA's TFDS builder reads them):
//                     "<subpath> <filename> <index> <label> ..." separated by single spaces
//   <subpath>/<filename>  the PNG images (8-bit gray; any PNG read_png_gray accepts)
// Files are taken in numeric order of <n>, lines in file order; LRA splits that list 80/10/10.
// Every image lies inside the contour directory: a metadata path that is absolute or climbs out
// with '..', a subpath that is (or passes through) a symbolic link to somewhere outside, and an
// image file that is such a link are refused (UsageError naming the metadata line or the file).
//
// Retrieval (AAN): a directory with new_aan_pairs.{train,eval,test}.tsv, tab-separated, no header,
//   five columns: label (0/1, possibly written 0.0/1.0), id1, id2, text1, text2. No quoting is
//   interpreted (LRA reads the columns as raw strings). Lines are indexed once (byte offsets) and
//   read on demand, so the 147k-pair training file is not held in memory.
#include <cstdint>
#include <string>
#include <vector>

#include "io/png.hpp"

namespace ab::lra {

struct PathfinderItem {
  std::string image;  // full path of the PNG
  int label = 0;
};

// Throws UsageError when the directory or its metadata is missing or malformed, or when a listed
// path leaves the directory (naming the file and line).
std::vector<PathfinderItem> read_pathfinder_metadata(const std::string& contour_dir);

// Reads one listed image (read_png_gray with `max_side`) after checking that the file is not a
// symbolic link resolving outside `contour_dir` (one lstat when it is not a link). Throws
// UsageError for such a link, std::runtime_error naming the file when it is missing or damaged.
GrayImage read_pathfinder_image(const std::string& contour_dir, const std::string& image, int64_t max_side);

struct AanPair {
  int label = 0;
  std::string id1, id2, text1, text2;
};

class AanFile {
 public:
  AanFile() = default;
  // Indexes the file (throws UsageError if it cannot be opened or a line is malformed).
  explicit AanFile(const std::string& path);
  int64_t size() const { return static_cast<int64_t>(offsets_.size()); }
  AanPair read(int64_t i) const;  // opens the file, seeks, parses one line
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<uint64_t> offsets_;
};

// Parses one AAN line (exposed for tests); throws std::runtime_error when it is malformed.
AanPair parse_aan_line(const std::string& line);

}  // namespace ab::lra
