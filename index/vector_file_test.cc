#include "index/vector_file.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "storage/file_util.h"

namespace cairn::index {
namespace {

namespace fs = std::filesystem;

class VectorFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cairn_vecfile_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/seg.vec";
    std::mt19937 rng(7);
    std::normal_distribution<float> g;
    x_.resize(kRows * kDim);
    for (float& v : x_) v = g(rng);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Overwrites one byte of the file at `offset`.
  void Damage(uint64_t offset) {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char c;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
  }

  static constexpr uint32_t kDim = 12;
  static constexpr size_t kRows = 3000;
  static constexpr size_t kRowBytes = kDim * 4 + 4;
  static constexpr size_t kHeader = 32;
  std::string dir_, path_;
  std::vector<float> x_;
};

TEST_F(VectorFileTest, ReadsRowsInAnyOrderWithRepeatsAndRuns) {
  ASSERT_TRUE(VectorFile::Write(path_, kDim, x_.data(), kRows).ok());
  EXPECT_EQ(fs::file_size(path_), kHeader + kRows * kRowBytes);
  auto f = VectorFile::Open(path_, kDim, kRows);
  ASSERT_TRUE(f.ok()) << f.status();
  // Scattered rows, a repeat, a run of adjacent rows longer than one read,
  // the first and the last.
  std::vector<uint64_t> rows = {2999, 5, 17, 5, 0, 1, 2, 1000};
  for (uint64_t r = 100; r < 100 + 25000 / kDim; ++r) rows.push_back(r);
  std::vector<float> out(rows.size() * kDim, -1.0f);
  std::vector<bool> ok(rows.size(), false);
  ASSERT_TRUE((*f)->Read(rows, out.data(), &ok).ok());
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_TRUE(ok[i]) << i;
    for (uint32_t d = 0; d < kDim; ++d) ASSERT_EQ(out[i * kDim + d], x_[rows[i] * kDim + d]) << i;
  }
  EXPECT_EQ((*f)->corrupt_rows(), 0u);
  // A row past the end is the caller's error.
  std::vector<uint64_t> past = {kRows};
  std::vector<bool> ok1(1, false);
  EXPECT_EQ((*f)->Read(past, out.data(), &ok1).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VectorFileTest, WriterAppendsInPieces) {
  auto w = VectorFile::Writer::Create(path_, kDim);
  ASSERT_TRUE(w.ok());
  for (size_t s = 0; s < kRows; s += 700) {
    ASSERT_TRUE((*w)->Append(&x_[s * kDim], std::min<size_t>(700, kRows - s)).ok());
  }
  ASSERT_TRUE((*w)->Close().ok());
  auto f = VectorFile::Open(path_, kDim, kRows);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<uint64_t> rows(kRows);
  for (size_t i = 0; i < kRows; ++i) rows[i] = kRows - 1 - i;
  std::vector<float> out(kRows * kDim);
  std::vector<bool> ok(kRows, false);
  ASSERT_TRUE((*f)->Read(rows, out.data(), &ok).ok());
  for (size_t i = 0; i < kRows; ++i) {
    ASSERT_TRUE(ok[i]);
    ASSERT_EQ(out[i * kDim], x_[(kRows - 1 - i) * kDim]);
  }
}

TEST_F(VectorFileTest, AnUnclosedWriterLeavesNoFile) {
  {
    auto w = VectorFile::Writer::Create(path_, kDim);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append(x_.data(), 10).ok());
  }
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_EQ(VectorFile::Open(path_, kDim, 10).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(VectorFileTest, ADamagedRowIsLeftUnsetAndTheOthersRead) {
  ASSERT_TRUE(VectorFile::Write(path_, kDim, x_.data(), kRows).ok());
  Damage(kHeader + 40 * kRowBytes + 7);           // inside row 40's vector
  Damage(kHeader + 41 * kRowBytes + kDim * 4 + 1);  // row 41's checksum
  auto f = VectorFile::Open(path_, kDim, kRows);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<uint64_t> rows = {39, 40, 41, 42, 40};
  std::vector<float> out(rows.size() * kDim, 0.0f);
  std::vector<bool> ok(rows.size(), false);
  ASSERT_TRUE((*f)->Read(rows, out.data(), &ok).ok());
  EXPECT_EQ(ok, (std::vector<bool>{true, false, false, true, false}));
  EXPECT_EQ(out[0], x_[39 * kDim]);
  EXPECT_EQ(out[3 * kDim], x_[42 * kDim]);
  EXPECT_GE((*f)->corrupt_rows(), 2u);
}

// Files of format 1 (rows checked by zlib's CRC-32) read as before, a
// damaged row detected alike.
TEST_F(VectorFileTest, AFileOfFormatOneReads) {
  std::string bytes("CAIRNVEC", 8);
  auto put = [&](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); };
  const uint32_t format = 1, dim = kDim, spare = 0;
  const uint64_t rows = kRows;
  put(&format, 4);
  put(&dim, 4);
  put(&rows, 8);
  put(&spare, 4);
  const uint32_t head_crc = storage::Crc32(bytes);
  put(&head_crc, 4);
  for (size_t r = 0; r < kRows; ++r) {
    const std::string_view v(reinterpret_cast<const char*>(&x_[r * kDim]), kDim * 4);
    bytes.append(v);
    const uint32_t crc = storage::Crc32(v);
    put(&crc, 4);
  }
  ASSERT_TRUE(storage::WriteFileSynced(path_, bytes).ok());
  Damage(kHeader + 5 * kRowBytes + 3);
  auto f = VectorFile::Open(path_, kDim, kRows);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<uint64_t> want = {4, 5, 2999};
  std::vector<float> out(want.size() * kDim, 0.0f);
  std::vector<bool> ok(want.size(), false);
  ASSERT_TRUE((*f)->Read(want, out.data(), &ok).ok());
  EXPECT_EQ(ok, (std::vector<bool>{true, false, true}));
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + kDim, &x_[4 * kDim]));
  EXPECT_TRUE(std::equal(out.begin() + 2 * kDim, out.end(), &x_[2999 * kDim]));
}

TEST_F(VectorFileTest, OpenRefusesDamagedOrMismatchedFiles) {
  ASSERT_TRUE(VectorFile::Write(path_, kDim, x_.data(), kRows).ok());
  EXPECT_EQ(VectorFile::Open(path_, kDim + 1, kRows).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(VectorFile::Open(path_, kDim, kRows - 1).status().code(), absl::StatusCode::kFailedPrecondition);
  // Truncated: the size no longer matches the header.
  fs::resize_file(path_, kHeader + (kRows - 1) * kRowBytes);
  auto t = VectorFile::Open(path_, kDim, kRows);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss) << t.status();
  // A damaged header.
  ASSERT_TRUE(VectorFile::Write(path_, kDim, x_.data(), kRows).ok());
  Damage(17);
  auto h = VectorFile::Open(path_, kDim, kRows);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kDataLoss) << h.status();
  // Too short for a header.
  fs::resize_file(path_, 10);
  EXPECT_EQ(VectorFile::Open(path_, kDim, kRows).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace cairn::index
