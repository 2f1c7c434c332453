// Tests for the vector-file readers of `cairn ingest` (cli/readers.h). Every
// test writes its input files into a fresh temporary directory, reads them
// back through OpenReader and checks the exact records or the error status.
#include "cli/readers.h"

#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace cairn::cli {
namespace {

namespace fs = std::filesystem;
using Rows = std::vector<std::vector<float>>;

// ---- Byte builders -----------------------------------------------------------

void AppendLE32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void AppendBE32(std::string* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void AppendLE16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v & 0xff));
  out->push_back(static_cast<char>(v >> 8));
}
void AppendF32(std::string* out, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  AppendLE32(out, bits);
}

std::string Fvecs(const Rows& rows) {
  std::string out;
  for (const auto& row : rows) {
    AppendLE32(&out, static_cast<uint32_t>(row.size()));
    for (float v : row) AppendF32(&out, v);
  }
  return out;
}
std::string Ivecs(const std::vector<std::vector<int32_t>>& rows) {
  std::string out;
  for (const auto& row : rows) {
    AppendLE32(&out, static_cast<uint32_t>(row.size()));
    for (int32_t v : row) AppendLE32(&out, static_cast<uint32_t>(v));
  }
  return out;
}
std::string Bvecs(const std::vector<std::vector<uint8_t>>& rows) {
  std::string out;
  for (const auto& row : rows) {
    AppendLE32(&out, static_cast<uint32_t>(row.size()));
    for (uint8_t v : row) out.push_back(static_cast<char>(v));
  }
  return out;
}

// A .npy file: the magic, version, header length and a header dict padded with
// spaces and a newline to a multiple of 64 bytes, then `data`.
std::string Npy(const std::string& descr, uint64_t rows, uint64_t cols, const std::string& data,
                bool fortran_order = false, int version = 1) {
  std::string dict = "{'descr': '" + descr +
                     "', 'fortran_order': " + (fortran_order ? "True" : "False") + ", 'shape': (" +
                     std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  const size_t prefix = version == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict.push_back(' ');
  dict.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(version));
  out.push_back('\0');
  if (version == 1)
    AppendLE16(&out, static_cast<uint16_t>(dict.size()));
  else
    AppendLE32(&out, static_cast<uint32_t>(dict.size()));
  return out + dict + data;
}
std::string F32Data(const Rows& rows) {
  std::string out;
  for (const auto& row : rows)
    for (float v : row) AppendF32(&out, v);
  return out;
}

// An IDX image file: magic 0x00000803, count, rows, cols (big-endian), pixels.
std::string Idx(uint32_t count, uint32_t rows, uint32_t cols, const std::vector<uint8_t>& pixels) {
  std::string out;
  AppendBE32(&out, 0x803);
  AppendBE32(&out, count);
  AppendBE32(&out, rows);
  AppendBE32(&out, cols);
  out.append(pixels.begin(), pixels.end());
  return out;
}

// ---- Files -------------------------------------------------------------------

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}
std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
// Writes `bytes` gzip-compressed with zlib.
void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  ASSERT_EQ(gzclose(f), Z_OK);
}
std::string Gzip(const std::string& bytes, const std::string& scratch_path) {
  WriteGzip(scratch_path, bytes);
  std::string out = ReadFile(scratch_path);
  fs::remove(scratch_path);
  return out;
}

// Writes an HDF5 file of 2-D datasets at the root, the ann-benchmarks layout.
class Hdf5Writer {
 public:
  explicit Hdf5Writer(const std::string& path)
      : file_(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    EXPECT_GE(file_, 0) << path;
  }
  ~Hdf5Writer() { H5Fclose(file_); }
  void Add(const std::string& name, const Rows& rows) {
    std::vector<float> flat;
    for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
    Write(name, {rows.size(), rows.empty() ? 0 : rows[0].size()}, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT,
          flat.data());
  }
  void AddInt32(const std::string& name, const std::vector<std::vector<int32_t>>& rows) {
    std::vector<int32_t> flat;
    for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
    Write(name, {rows.size(), rows.empty() ? 0 : rows[0].size()}, H5T_STD_I32LE, H5T_NATIVE_INT32,
          flat.data());
  }
  void Add1D(const std::string& name, const std::vector<float>& values) {
    Write(name, {values.size()}, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, values.data());
  }

 private:
  void Write(const std::string& name, std::vector<hsize_t> dims, hid_t file_type, hid_t mem_type,
             const void* data) {
    hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t set =
        H5Dcreate2(file_, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(set, 0) << name;
    EXPECT_GE(H5Dwrite(set, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0) << name;
    H5Dclose(set);
    H5Sclose(space);
  }
  hid_t file_;
};

// ---- Reading -----------------------------------------------------------------

ReaderOptions Format(const std::string& format) {
  ReaderOptions o;
  o.format = format;
  return o;
}

struct ReadResult {
  std::vector<InputRecord> records;  // those read before the end or the first error
  absl::Status status;               // OK when the end was reached
};

// Reads records from `reader` until the end or the first error.
ReadResult ReadRest(RecordReader& reader) {
  ReadResult out;
  while (true) {
    auto rec = reader.Next();
    if (!rec.ok()) {
      out.status = rec.status();
      return out;
    }
    if (!rec->has_value()) return out;
    out.records.push_back(std::move(**rec));
  }
}

// Opens `path` and reads records until the end or the first error (opening
// errors included).
ReadResult ReadAll(const std::string& path, const ReaderOptions& options = {}) {
  auto reader = OpenReader(path, options);
  if (!reader.ok()) return ReadResult{{}, reader.status()};
  return ReadRest(**reader);
}

// Checks records read from a binary (id-less) format: numbered from 1,
// positional ids from 0, no payload or text.
void ExpectPositional(const std::vector<InputRecord>& records, const Rows& want) {
  ASSERT_EQ(records.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("record " + std::to_string(i + 1));
    EXPECT_EQ(records[i].number, i + 1);
    EXPECT_TRUE(records[i].positional);
    EXPECT_EQ(records[i].num_id, std::optional<uint64_t>(i));
    EXPECT_FALSE(records[i].str_id.has_value());
    EXPECT_EQ(records[i].vector, want[i]);
    EXPECT_EQ(records[i].payload_json, "");
    EXPECT_EQ(records[i].text, "");
  }
}

// Checks an error's code and that its message contains each of `parts`.
void ExpectError(const absl::Status& s, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), code) << s;
  for (const auto& p : parts) {
    EXPECT_NE(s.message().find(p), absl::string_view::npos) << "\"" << p << "\" not in: " << s;
  }
}

class ReadersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "cairn-readers-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  // Writes `bytes` to `name` (gzip-compressed when it ends in ".gz") and
  // returns the path.
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string p = Path(name);
    if (name.size() > 3 && name.compare(name.size() - 3, 3, ".gz") == 0)
      WriteGzip(p, bytes);
    else
      WriteFile(p, bytes);
    return p;
  }
  std::string GzipBytes(const std::string& bytes) { return Gzip(bytes, Path("scratch.gz")); }

  std::string dir_;
};

const Rows kRows = {
    {1.5f, -2.25f, 0.0f, 1e-30f}, {3.0f, 4.0f, -5.5f, 6.125f}, {1e30f, -1e-3f, 7.0f, 8.0f}};

// ---- fvecs / ivecs / bvecs ---------------------------------------------------

TEST_F(ReadersTest, FvecsRoundTrip) {
  auto r = ReadAll(Write("base.fvecs", Fvecs(kRows)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

TEST_F(ReadersTest, FvecsGzipRoundTrip) {
  auto r = ReadAll(Write("base.fvecs.gz", Fvecs(kRows)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

TEST_F(ReadersTest, EmptyFvecsHasNoRecords) {
  auto r = ReadAll(Write("empty.fvecs", ""));
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.records.empty());
}

TEST_F(ReadersTest, IvecsRoundTrip) {
  const std::vector<std::vector<int32_t>> rows = {{0, -1, 16777216}, {7, 100000, -42}};
  auto r = ReadAll(Write("gt.ivecs", Ivecs(rows)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, -1, 16777216}, {7, 100000, -42}});
}

TEST_F(ReadersTest, IvecsGzipRoundTrip) {
  const std::vector<std::vector<int32_t>> rows = {{0, -1, 16777216}, {7, 100000, -42}};
  auto r = ReadAll(Write("gt.ivecs.gz", Ivecs(rows)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, -1, 16777216}, {7, 100000, -42}});
}

TEST_F(ReadersTest, BvecsRoundTrip) {
  auto r = ReadAll(Write("sift.bvecs", Bvecs({{0, 255, 128}, {1, 2, 3}})));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, 255, 128}, {1, 2, 3}});
}

TEST_F(ReadersTest, BvecsGzipRoundTrip) {
  auto r = ReadAll(Write("sift.bvecs.gz", Bvecs({{0, 255, 128}, {1, 2, 3}})));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, 255, 128}, {1, 2, 3}});
}

TEST_F(ReadersTest, FvecsTruncatedRecordIsDataLoss) {
  std::string bytes = Fvecs(kRows);
  bytes.resize(bytes.size() - 3);  // the third record loses part of its last value
  const std::string path = Write("cut.fvecs", bytes);
  auto r = ReadAll(path);
  EXPECT_EQ(r.records.size(), 2u);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "record 3", "truncated"});
}

TEST_F(ReadersTest, FvecsTruncatedDimensionHeaderIsDataLoss) {
  std::string bytes = Fvecs(kRows) + std::string("\x04\x00", 2);  // half a dimension word
  const std::string path = Write("cut.fvecs", bytes);
  auto r = ReadAll(path);
  EXPECT_EQ(r.records.size(), 3u);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "record 4", "truncated"});
}

TEST_F(ReadersTest, FvecsBadDimensionIsDataLoss) {
  std::string bytes = Fvecs({{1, 2}});
  AppendLE32(&bytes, static_cast<uint32_t>(-5));
  const std::string path = Write("bad.fvecs", bytes);
  auto r = ReadAll(path);
  EXPECT_EQ(r.records.size(), 1u);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "record 2", "dimension"});
}

// In a *vecs file a record whose dimension differs from the first means the
// file is not what it claims (or is misaligned); the reader stops with
// DataLoss rather than skipping, so nothing after it is read.
TEST_F(ReadersTest, VecsDimensionChangeIsInvalidAndReadingContinues) {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"mixed.fvecs", Fvecs({{1, 2, 3}, {1, 2}, {4, 5, 6}})},
      {"mixed.ivecs", Ivecs({{1, 2, 3}, {1, 2}, {4, 5, 6}})},
      {"mixed.bvecs", Bvecs({{1, 2, 3}, {1, 2}, {4, 5, 6}})},
  };
  for (const auto& [name, bytes] : files) {
    SCOPED_TRACE(name);
    const std::string path = Write(name, bytes);
    auto reader = OpenReader(path, {});
    ASSERT_TRUE(reader.ok()) << reader.status();
    auto r1 = (*reader)->Next();
    ASSERT_TRUE(r1.ok() && r1->has_value()) << r1.status();
    EXPECT_EQ((*r1)->vector, std::vector<float>({1, 2, 3}));
    auto r2 = (*reader)->Next();
    ExpectError(r2.status(), absl::StatusCode::kInvalidArgument, {path, "record 2", "dimension 2", "3"});
    auto r3 = (*reader)->Next();
    ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
    EXPECT_EQ((*r3)->vector, std::vector<float>({4, 5, 6}));
    EXPECT_EQ(*(*r3)->num_id, 2u);
  }
}

TEST_F(ReadersTest, FvecsNanAndInfAreInvalidAndReadingContinues) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::string path = Write("nan.fvecs", Fvecs({{1, 2}, {3, nan}, {-inf, 4}, {5, 6}}));
  auto reader = OpenReader(path, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto r1 = (*reader)->Next();
  ASSERT_TRUE(r1.ok() && r1->has_value()) << r1.status();
  EXPECT_EQ((*r1)->vector, std::vector<float>({1, 2}));

  auto r2 = (*reader)->Next();
  ExpectError(r2.status(), absl::StatusCode::kInvalidArgument,
              {path, "record 2", "value 1", "not finite"});
  auto r3 = (*reader)->Next();
  ExpectError(r3.status(), absl::StatusCode::kInvalidArgument,
              {path, "record 3", "value 0", "not finite"});

  auto r4 = (*reader)->Next();
  ASSERT_TRUE(r4.ok() && r4->has_value()) << r4.status();
  EXPECT_EQ((*r4)->number, 4u);
  EXPECT_EQ((*r4)->num_id, std::optional<uint64_t>(3));
  EXPECT_EQ((*r4)->vector, std::vector<float>({5, 6}));
  auto end = (*reader)->Next();
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(end->has_value());
}

// ---- npy -----------------------------------------------------------------------

TEST_F(ReadersTest, NpyFloat32RoundTrip) {
  auto r = ReadAll(Write("base.npy", Npy("<f4", 3, 4, F32Data(kRows))));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

TEST_F(ReadersTest, NpyFloat16RoundTrip) {
  // 1.0, -2.0, 0.5, 65504 (largest half), 2^-24 (smallest subnormal), 0x3555.
  std::string data;
  for (uint16_t h : {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x3555}) AppendLE16(&data, h);
  auto r = ReadAll(Write("half.npy", Npy("<f2", 2, 3, data)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records,
                   {{1.0f, -2.0f, 0.5f}, {65504.0f, std::ldexp(1.0f, -24), 0.333251953125f}});
}

TEST_F(ReadersTest, NpyUint8RoundTrip) {
  auto r =
      ReadAll(Write("bytes.npy", Npy("|u1", 2, 3, std::string("\x00\xff\x80\x01\x02\x03", 6))));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, 255, 128}, {1, 2, 3}});
}

TEST_F(ReadersTest, NpyVersion2HeaderRoundTrip) {
  auto r = ReadAll(Write("v2.npy", Npy("<f4", 3, 4, F32Data(kRows), false, /*version=*/2)));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

TEST_F(ReadersTest, NpyGzipRoundTrip) {
  {
    auto r = ReadAll(Write("base.npy.gz", Npy("<f4", 3, 4, F32Data(kRows))));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, kRows);
  }
  {
    std::string data;
    for (uint16_t h : {0x3C00, 0xC000}) AppendLE16(&data, h);
    auto r = ReadAll(Write("half.npy.gz", Npy("<f2", 1, 2, data)));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, {{1.0f, -2.0f}});
  }
  {
    auto r = ReadAll(Write("bytes.npy.gz", Npy("|u1", 1, 2, std::string("\x07\xfe", 2))));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, {{7, 254}});
  }
}

TEST_F(ReadersTest, NpyTruncatedDataIsDataLoss) {
  std::string bytes = Npy("<f4", 3, 4, F32Data(kRows));
  bytes.resize(bytes.size() - 5);
  const std::string path = Write("cut.npy", bytes);
  auto r = ReadAll(path);
  ExpectPositional(r.records, {kRows[0], kRows[1]});
  // The .npy reader calls the record a "row" in this message.
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "record 3", "truncated"});
}

TEST_F(ReadersTest, NpyTruncatedHeaderIsAnError) {
  const std::string bytes = Npy("<f4", 3, 4, F32Data(kRows)).substr(0, 30);
  const std::string path = Write("cut-header.npy", bytes);
  auto r = ReadAll(path);
  EXPECT_TRUE(r.records.empty());
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "header", "truncated"});
}

TEST_F(ReadersTest, NpyUnsupportedDtypeIsInvalidArgument) {
  const std::string path = Write("double.npy", Npy("<f8", 1, 2, std::string(16, '\0')));
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "dtype"});
}

TEST_F(ReadersTest, NpyFortranOrderIsInvalidArgument) {
  const std::string path =
      Write("fortran.npy", Npy("<f4", 3, 4, F32Data(kRows), /*fortran_order=*/true));
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "C-order"});
}

TEST_F(ReadersTest, NpyOneDimensionalIsInvalidArgument) {
  std::string bytes = Npy("<f4", 3, 4, F32Data(kRows));
  const size_t at = bytes.find("(3, 4)");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 6, "(12,) ");  // same length keeps the header padding right
  const std::string path = Write("flat.npy", bytes);
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "shape"});
}

TEST_F(ReadersTest, NpyWithoutMagicIsInvalidArgument) {
  const std::string path = Write("not.npy", std::string(64, 'x'));
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "NUMPY"});
}

TEST_F(ReadersTest, NpyNanAndInfAreInvalidAndReadingContinues) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  {
    const std::string path =
        Write("nan.npy", Npy("<f4", 4, 2, F32Data({{1, 2}, {nan, 3}, {4, inf}, {5, 6}})));
    auto reader = OpenReader(path, {});
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_TRUE((*reader)->Next().ok());
    ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
                {path, "record 2", "not finite"});
    ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
                {path, "record 3", "not finite"});
    auto r4 = (*reader)->Next();
    ASSERT_TRUE(r4.ok() && r4->has_value()) << r4.status();
    EXPECT_EQ((*r4)->number, 4u);
    EXPECT_EQ((*r4)->vector, std::vector<float>({5, 6}));
  }
  {
    // float16 infinity (0x7C00) and NaN (0x7E00).
    std::string data;
    for (uint16_t h : {0x7C00, 0x3C00, 0x3C00, 0x7E00, 0x3C00, 0x3C00}) AppendLE16(&data, h);
    const std::string path = Write("nan-half.npy", Npy("<f2", 3, 2, data));
    auto reader = OpenReader(path, {});
    ASSERT_TRUE(reader.ok()) << reader.status();
    ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
                {path, "record 1", "not finite"});
    ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
                {path, "record 2", "not finite"});
    auto r3 = (*reader)->Next();
    ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
    EXPECT_EQ((*r3)->vector, std::vector<float>({1, 1}));
  }
}

// ---- HDF5 ----------------------------------------------------------------------

const Rows kTrain = {{1, 2, 3}, {4.5f, -5, 6}};
const Rows kTest = {{-1, 0.25f, 9}};

void WriteAnnBenchmarks(const std::string& path) {
  Hdf5Writer w(path);
  w.Add("train", kTrain);
  w.Add("test", kTest);
  w.AddInt32("neighbors", {{0, 1}});
}

TEST_F(ReadersTest, Hdf5ReadsTrainByDefault) {
  const std::string path = Path("glove.hdf5");
  WriteAnnBenchmarks(path);
  auto r = ReadAll(path);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kTrain);
}

TEST_F(ReadersTest, Hdf5DatasetOptionPicksTest) {
  const std::string path = Path("glove.h5");
  WriteAnnBenchmarks(path);
  ReaderOptions o;
  o.hdf5_dataset = "test";
  auto r = ReadAll(path, o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kTest);
}

TEST_F(ReadersTest, Hdf5Int32DatasetIsConvertedToFloat) {
  const std::string path = Path("ints.hdf5");
  {
    Hdf5Writer w(path);
    w.AddInt32("train", {{1, -2, 3}, {100000, 0, -7}});
  }
  auto r = ReadAll(path);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{1, -2, 3}, {100000, 0, -7}});
}

TEST_F(ReadersTest, Hdf5MissingDatasetNamesThoseInTheFile) {
  const std::string path = Path("glove.hdf5");
  WriteAnnBenchmarks(path);
  ReaderOptions o;
  o.hdf5_dataset = "base";
  auto r = ReadAll(path, o);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument,
              {path, "\"base\"", "neighbors", "test", "train"});
}

TEST_F(ReadersTest, Hdf5OneDimensionalDatasetIsInvalidArgument) {
  const std::string path = Path("flat.hdf5");
  {
    Hdf5Writer w(path);
    w.Add1D("train", {1, 2, 3});
  }
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "train", "2-D"});
}

TEST_F(ReadersTest, Hdf5ReadsAcrossBlocks) {
  // More rows than the reader's block of 4096, so it reads several slabs.
  Rows rows;
  for (int i = 0; i < 5000; ++i)
    rows.push_back({static_cast<float>(i), static_cast<float>(-i) / 4});
  const std::string path = Path("big.hdf5");
  {
    Hdf5Writer w(path);
    w.Add("train", rows);
  }
  auto r = ReadAll(path);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, rows);
}

TEST_F(ReadersTest, Hdf5NanIsInvalidAndReadingContinues) {
  const std::string path = Path("nan.hdf5");
  {
    Hdf5Writer w(path);
    w.Add("train", {{1, 2}, {std::numeric_limits<float>::quiet_NaN(), 0}, {3, 4}});
  }
  auto reader = OpenReader(path, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Next().ok());
  ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
              {path, "record 2", "not finite"});
  auto r3 = (*reader)->Next();
  ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
  EXPECT_EQ((*r3)->vector, std::vector<float>({3, 4}));
}

// Sets TMPDIR for the life of the object.
class ScopedTmpdir {
 public:
  explicit ScopedTmpdir(const std::string& dir) {
    if (const char* old = std::getenv("TMPDIR")) saved_ = old;
    setenv("TMPDIR", dir.c_str(), 1);
  }
  ~ScopedTmpdir() {
    if (saved_)
      setenv("TMPDIR", saved_->c_str(), 1);
    else
      unsetenv("TMPDIR");
  }

 private:
  std::optional<std::string> saved_;
};

TEST_F(ReadersTest, Hdf5GzipIsInflatedToATemporaryFileAndRemoved) {
  const std::string plain = Path("plain.hdf5");
  WriteAnnBenchmarks(plain);
  const std::string path = Write("glove.hdf5.gz", ReadFile(plain));
  fs::remove(plain);

  // The reader inflates into TMPDIR; point it at an empty directory of ours.
  const std::string tmp = Path("tmpdir");
  fs::create_directory(tmp);
  ScopedTmpdir env(tmp);
  {
    auto reader = OpenReader(path, {});
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_FALSE(fs::is_empty(tmp));  // the inflated copy
    auto r = ReadRest(**reader);
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, kTrain);
  }
  EXPECT_TRUE(fs::is_empty(tmp)) << "the inflated copy is removed when the reader closes";
  ReaderOptions o;
  o.hdf5_dataset = "test";
  auto r = ReadAll(path, o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kTest);
  EXPECT_TRUE(fs::is_empty(tmp));
}

TEST_F(ReadersTest, Hdf5FormatOnNonHdf5FileIsDataLoss) {
  const std::string path = Write("fake.hdf5", std::string(1024, 'x'));
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "HDF5"});
}

TEST_F(ReadersTest, Hdf5FromStdinIsInvalidArgument) {
  auto r = OpenReader("-", Format("hdf5"));
  ExpectError(r.status(), absl::StatusCode::kInvalidArgument, {"HDF5", "stdin"});
}

// ---- IDX -----------------------------------------------------------------------

TEST_F(ReadersTest, IdxRoundTrip) {
  const std::string path =
      Write("train-images-idx3-ubyte", Idx(3, 2, 2, {0, 1, 2, 3, 255, 254, 253, 252, 9, 8, 7, 6}));
  auto r = ReadAll(path);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{0, 1, 2, 3}, {255, 254, 253, 252}, {9, 8, 7, 6}});
}

TEST_F(ReadersTest, IdxGzipRoundTrip) {
  const std::string path =
      Write("t10k-images-idx3-ubyte.gz", Idx(2, 1, 3, {10, 20, 30, 40, 50, 60}));
  auto r = ReadAll(path);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, {{10, 20, 30}, {40, 50, 60}});
}

TEST_F(ReadersTest, IdxWrongMagicIsInvalidArgument) {
  std::string bytes = Idx(1, 1, 2, {1, 2});
  bytes[3] = 0x01;  // 0x00000801: a labels file, one dimension
  const std::string path = Write("train-labels-idx3-ubyte", bytes);
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {path, "IDX"});
}

TEST_F(ReadersTest, IdxTruncatedIsDataLoss) {
  const std::string path = Write("cut-idx3-ubyte", Idx(3, 2, 2, {0, 1, 2, 3, 4, 5, 6, 7, 8}));
  auto r = ReadAll(path);
  ExpectPositional(r.records, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  // IDX is read by the .npy reader, which calls the record a "row" here.
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path, "record 3", "truncated"});
}

// ---- JSON Lines ----------------------------------------------------------------

const char kJsonl[] =
    "{\"id\": 7, \"vector\": [1, 2.5, -3]}\n"
    "\n"
    "{\"id\": \"doc-8\", \"vector\": [0.5, 0, 1e-3], \"payload\": {\"lang\": \"en\", \"n\": 3}, "
    "\"text\": \"hello\"}\n"
    "   \t \n"
    "{\"id\": 18446744073709551615, \"vector\": [4, 5, 6], \"payload\": null, \"text\": null}\r\n"
    "{\"id\": 0, \"vector\": [7, 8, 9], \"payload\": {}, \"text\": \"last line, no newline\"}";

void ExpectJsonlRecords(const std::vector<InputRecord>& r) {
  ASSERT_EQ(r.size(), 4u);
  // `number` is the line number, blank lines included, as in error messages.
  EXPECT_EQ(r[0].number, 1u);
  EXPECT_FALSE(r[0].positional);
  EXPECT_EQ(r[0].num_id, std::optional<uint64_t>(7));
  EXPECT_FALSE(r[0].str_id.has_value());
  EXPECT_EQ(r[0].vector, std::vector<float>({1, 2.5f, -3}));
  EXPECT_EQ(r[0].payload_json, "");
  EXPECT_EQ(r[0].text, "");

  EXPECT_EQ(r[1].number, 3u);
  EXPECT_FALSE(r[1].positional);
  EXPECT_FALSE(r[1].num_id.has_value());
  EXPECT_EQ(r[1].str_id, std::optional<std::string>("doc-8"));
  EXPECT_EQ(r[1].vector, std::vector<float>({0.5f, 0, 1e-3f}));
  EXPECT_EQ(r[1].payload_json, "{\"lang\":\"en\",\"n\":3}");
  EXPECT_EQ(r[1].text, "hello");

  EXPECT_EQ(r[2].number, 5u);
  EXPECT_EQ(r[2].num_id, std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
  EXPECT_EQ(r[2].vector, std::vector<float>({4, 5, 6}));
  EXPECT_EQ(r[2].payload_json, "");
  EXPECT_EQ(r[2].text, "");

  EXPECT_EQ(r[3].number, 6u);
  EXPECT_EQ(r[3].num_id, std::optional<uint64_t>(0));
  EXPECT_EQ(r[3].vector, std::vector<float>({7, 8, 9}));
  EXPECT_EQ(r[3].payload_json, "{}");
  EXPECT_EQ(r[3].text, "last line, no newline");
}

TEST_F(ReadersTest, JsonlRoundTrip) {
  auto r = ReadAll(Write("docs.jsonl", kJsonl));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectJsonlRecords(r.records);
}

TEST_F(ReadersTest, JsonlGzipRoundTrip) {
  auto r = ReadAll(Write("docs.ndjson.gz", kJsonl));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectJsonlRecords(r.records);
}

TEST_F(ReadersTest, JsonlBadLineIsInvalidArgumentAndReadingContinues) {
  const std::string path = Write("docs.jsonl",
                                 "{\"id\": 1, \"vector\": [1]}\n"
                                 "this is not json\n"
                                 "{\"id\": 3, \"vector\": [3]}\n");
  auto reader = OpenReader(path, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto r1 = (*reader)->Next();
  ASSERT_TRUE(r1.ok() && r1->has_value()) << r1.status();
  EXPECT_EQ((*r1)->num_id, std::optional<uint64_t>(1));
  ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
              {path, "line 2", "JSON"});
  auto r3 = (*reader)->Next();
  ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
  EXPECT_EQ((*r3)->number, 3u);
  EXPECT_EQ((*r3)->num_id, std::optional<uint64_t>(3));
  EXPECT_EQ((*r3)->vector, std::vector<float>({3}));
  auto end = (*reader)->Next();
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(end->has_value());
}

// A bad line 2 between good ones: InvalidArgument whose message names the
// file and holds `parts`, then reading goes on with line 3.
void ExpectBadSecondLine(const std::string& path, std::vector<std::string> parts) {
  auto reader = OpenReader(path, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Next().ok());
  parts.push_back(path);
  ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument, parts);
  auto r3 = (*reader)->Next();
  ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
  EXPECT_EQ((*r3)->number, 3u);
}

TEST_F(ReadersTest, JsonlBadRecordsAreInvalidArgument) {
  const std::string good = "{\"id\": 1, \"vector\": [1, 2]}\n";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"[1, 2, 3]", {"line 2", "JSON object"}},
      {"{\"id\": 1, \"vector\": NaN}", {"line 2", "JSON"}},
      {"{\"vector\": [1, 2]}", {"line 2", "\"id\""}},
      {"{\"id\": -4, \"vector\": [1, 2]}", {"line 2", "\"id\""}},
      {"{\"id\": 1.5, \"vector\": [1, 2]}", {"line 2", "\"id\""}},
      {"{\"id\": \"\", \"vector\": [1, 2]}", {"line 2", "\"id\""}},
      {"{\"id\": 2, \"vector\": [1, \"2\"]}", {"line 2", "\"vector\""}},
      {"{\"id\": 2, \"vector\": []}", {"line 2", "\"vector\""}},
      {"{\"id\": 2}", {"line 2", "\"vector\""}},
      // 1e39 overflows float32 to infinity.
      {"{\"id\": 2, \"vector\": [1, 1e39]}", {"line 2", "value 1", "not finite"}},
      {"{\"id\": 2, \"vector\": [1, 2], \"payload\": [1]}", {"line 2", "\"payload\""}},
      {"{\"id\": 2, \"vector\": [1, 2], \"text\": 5}", {"line 2", "\"text\""}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].first);
    const std::string path =
        Write("bad" + std::to_string(i) + ".jsonl", good + cases[i].first + "\n" + good);
    ExpectBadSecondLine(path, cases[i].second);
  }
}

TEST_F(ReadersTest, JsonlQueriesNeedNoIdAndMayBeBareArrays) {
  ReaderOptions o;
  o.vectors_only = true;
  auto r = ReadAll(Write("queries.jsonl", "{\"vector\": [1, 2]}\n[3, 4]\n{\"id\": \"q\", \"vector\": [5, 6]}\n"), o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.records[0].vector, std::vector<float>({1, 2}));
  EXPECT_FALSE(r.records[0].num_id.has_value() || r.records[0].str_id.has_value());
  EXPECT_EQ(r.records[1].vector, std::vector<float>({3, 4}));
  EXPECT_EQ(r.records[1].number, 2u);
  EXPECT_EQ(r.records[2].str_id, std::optional<std::string>("q"));
  // Still checked: the vector, and what is neither an object nor an array.
  auto bad = ReadAll(Write("bad-queries.jsonl", "[1, \"x\"]\n"), o);
  ExpectError(bad.status, absl::StatusCode::kInvalidArgument, {"line 1", "\"vector\""});
  bad = ReadAll(Write("bad-queries2.jsonl", "7\n"), o);
  ExpectError(bad.status, absl::StatusCode::kInvalidArgument, {"line 1", "not a JSON object or array"});
}

// ---- Corrupt gzip --------------------------------------------------------------

// A valid gzip member header, then bytes that are not a deflate stream.
std::string GzipHeaderThenGarbage() {
  return std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10) + std::string(64, '\xff');
}

TEST_F(ReadersTest, CorruptGzipIsDataLoss) {
  for (const std::string name :
       {"bad.fvecs.gz", "bad.npy.gz", "bad.jsonl.gz", "bad-idx3-ubyte.gz", "bad.hdf5.gz"}) {
    SCOPED_TRACE(name);
    const std::string path = Path(name);
    WriteFile(path, GzipHeaderThenGarbage());
    auto r = ReadAll(path);
    EXPECT_TRUE(r.records.empty());
    ExpectError(r.status, absl::StatusCode::kDataLoss, {path});
  }
}

TEST_F(ReadersTest, GzipCutInTheMiddleIsAnError) {
  // Incompressible values, so half the compressed bytes is half the records.
  Rows rows;
  uint32_t x = 12345;
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> row;
    for (int j = 0; j < 16; ++j) {
      x = x * 1664525u + 1013904223u;
      row.push_back(static_cast<float>(x >> 8));
    }
    rows.push_back(row);
  }
  const std::string gz = GzipBytes(Fvecs(rows));
  const std::string path = Path("cut.fvecs.gz");
  WriteFile(path, gz.substr(0, gz.size() / 2));
  auto r = ReadAll(path);
  EXPECT_LT(r.records.size(), rows.size());
  EXPECT_FALSE(r.status.ok()) << "a truncated gzip stream read as a complete file of "
                              << r.records.size() << " records";
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path});
}

// A gzip file cut just before its 8-byte trailer (CRC-32 and length): every
// byte decompresses, but the stream is incomplete and unchecked, so reading
// must fail rather than end cleanly.
TEST_F(ReadersTest, JsonlGzipWithoutTrailerIsDataLoss) {
  const std::string gz = GzipBytes(kJsonl);
  const std::string path = Path("notrailer.jsonl.gz");
  WriteFile(path, gz.substr(0, gz.size() - 8));
  auto r = ReadAll(path);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {path});
}

// BUG (cli/readers.cc, Input::ReadExact, used by fvecs/ivecs/bvecs, npy and
// IDX): a gzip stream that is cut off where the decompressed data ends on a
// record boundary reads as a clean end of file. gzread() returns 0 and sets
// Z_BUF_ERROR ("unexpected end of file"), which zlib does not report as -1;
// ReadExact takes the 0 for the end without asking gzerror(). (JSON Lines,
// which calls gzerror() after gzgets(), reports it.) Disabled until fixed.
TEST_F(ReadersTest, BinaryGzipWithoutTrailerIsDataLoss) {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"notrailer.fvecs.gz", Fvecs(kRows)},
      {"notrailer.npy.gz", Npy("<f4", 3, 4, F32Data(kRows))},
      {"notrailer-idx3-ubyte.gz", Idx(2, 1, 2, {1, 2, 3, 4})},
  };
  for (const auto& [name, bytes] : files) {
    SCOPED_TRACE(name);
    const std::string gz = GzipBytes(bytes);
    const std::string path = Path(name);
    WriteFile(path, gz.substr(0, gz.size() - 8));
    auto r = ReadAll(path);
    ExpectError(r.status, absl::StatusCode::kDataLoss, {path});
  }
}

// ---- Format detection ----------------------------------------------------------

TEST_F(ReadersTest, DetectFormatByName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a.fvecs", "fvecs"},
      {"a.fvecs.gz", "fvecs"},
      {"a.ivecs", "ivecs"},
      {"a.ivecs.gz", "ivecs"},
      {"a.bvecs", "bvecs"},
      {"a.bvecs.gz", "bvecs"},
      {"a.npy", "npy"},
      {"a.npy.gz", "npy"},
      {"a.hdf5", "hdf5"},
      {"a.hdf5.gz", "hdf5"},
      {"a.h5", "hdf5"},
      {"a.h5.gz", "hdf5"},
      {"a.jsonl", "jsonl"},
      {"a.jsonl.gz", "jsonl"},
      {"a.ndjson", "jsonl"},
      {"a.ndjson.gz", "jsonl"},
      {"train-images-idx3-ubyte", "idx"},
      {"t10k-images-idx3-ubyte.gz", "idx"},
  };
  for (const auto& [name, want] : cases) {
    // The content (JSON) says otherwise: the name wins.
    const std::string path = Write(name, "{\"id\": 1, \"vector\": [1]}\n");
    auto got = DetectFormat(path);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status();
    EXPECT_EQ(*got, want) << name;
  }
}

TEST_F(ReadersTest, DetectFormatByContent) {
  const std::string hdf5 = Path("h.tmp");
  WriteAnnBenchmarks(hdf5);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {Npy("<f4", 3, 4, F32Data(kRows)), "npy"},
      {ReadFile(hdf5), "hdf5"},
      {Idx(1, 1, 2, {1, 2}), "idx"},
      {"{\"id\": 1, \"vector\": [1]}\n", "jsonl"},
      {" \n\t{\"id\": 1, \"vector\": [1]}\n", "jsonl"},
      {"[1, 2]\n[3, 4]\n", "jsonl"},  // queries as bare arrays
      {Fvecs(kRows), "fvecs"},
      // Dimensions whose first byte reads '[' or '{' (91, 123): still fvecs.
      {Fvecs(Rows(2, std::vector<float>(91, 1.0f))), "fvecs"},
      {Fvecs(Rows(2, std::vector<float>(123, 1.0f))), "fvecs"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [bytes, want] = cases[i];
    for (const std::string& name :
         {"data" + std::to_string(i) + ".bin", "data" + std::to_string(i) + ".gz"}) {
      const std::string path = Write(name, bytes);
      auto got = DetectFormat(path);
      ASSERT_TRUE(got.ok()) << name << ": " << got.status();
      EXPECT_EQ(*got, want) << name;
    }
  }
}

TEST_F(ReadersTest, DetectFormatUnknownContentIsInvalidArgument) {
  for (const std::string& bytes :
       {std::string(""), std::string("xy"), std::string("\xff\xff\xff\xff\xff\xff\xff\xff")}) {
    const std::string path = Write("mystery.dat", bytes);
    auto got = DetectFormat(path);
    ExpectError(got.status(), absl::StatusCode::kInvalidArgument, {path, "--format"});
  }
}

TEST_F(ReadersTest, DetectFormatOfMissingFileIsNotFound) {
  auto got = DetectFormat(Path("absent.dat"));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
}

TEST_F(ReadersTest, AutoFormatReadsByContent) {
  {
    auto r = ReadAll(Write("vectors.dat", Npy("<f4", 3, 4, F32Data(kRows))));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, kRows);
  }
  {
    auto r = ReadAll(Write("vectors.gz", Fvecs(kRows)));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, kRows);
  }
  {
    const std::string plain = Path("h.tmp");
    WriteAnnBenchmarks(plain);
    auto r = ReadAll(Write("ann.gz", ReadFile(plain)));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectPositional(r.records, kTrain);
  }
  {
    auto r = ReadAll(Write("docs.txt", kJsonl));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ExpectJsonlRecords(r.records);
  }
}

TEST_F(ReadersTest, ExplicitFormatOverridesTheName) {
  auto r = ReadAll(Write("vectors.jsonl", Fvecs(kRows)), Format("fvecs"));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

// ---- Opening errors ------------------------------------------------------------

TEST_F(ReadersTest, MissingFileIsNotFound) {
  for (const std::string format :
       {"auto", "fvecs", "ivecs", "bvecs", "npy", "hdf5", "idx", "jsonl"}) {
    SCOPED_TRACE(format);
    const std::string path = Path("absent.fvecs");
    auto r = OpenReader(path, Format(format));
    ExpectError(r.status(), absl::StatusCode::kNotFound, {path});
  }
}

TEST_F(ReadersTest, UnknownFormatIsInvalidArgument) {
  const std::string path = Write("base.fvecs", Fvecs(kRows));
  auto r = OpenReader(path, Format("parquet"));
  ExpectError(r.status(), absl::StatusCode::kInvalidArgument, {"parquet"});
}

// ---- Payload files -------------------------------------------------------------

ReaderOptions WithPayloads(const std::string& payloads_path) {
  ReaderOptions o;
  o.payloads_path = payloads_path;
  return o;
}

TEST_F(ReadersTest, PayloadsAreAttachedInOrder) {
  const std::string vectors = Write("base.fvecs", Fvecs(kRows));
  const std::string payloads =
      Write("payloads.jsonl", "{\"a\": 1}\nnull\n{\"b\": \"x\", \"c\": [1, 2]}\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.records.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.records[i].num_id, std::optional<uint64_t>(i));
    EXPECT_TRUE(r.records[i].positional);
    EXPECT_EQ(r.records[i].vector, kRows[i]);
  }
  EXPECT_EQ(r.records[0].payload_json, "{\"a\":1}");
  EXPECT_EQ(r.records[1].payload_json, "") << "a null line gives no payload";
  EXPECT_EQ(r.records[2].payload_json, "{\"b\":\"x\",\"c\":[1,2]}");
}

TEST_F(ReadersTest, PayloadsWithGzipNpyAndGzipPayloadFile) {
  const std::string vectors = Write("base.npy.gz", Npy("<f4", 3, 4, F32Data(kRows)));
  const std::string payloads = Write("payloads.jsonl.gz", "null\n{\"k\": true}\nnull\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.records[0].payload_json, "");
  EXPECT_EQ(r.records[1].payload_json, "{\"k\":true}");
  EXPECT_EQ(r.records[2].payload_json, "");
}

TEST_F(ReadersTest, PayloadsWithHdf5) {
  const std::string vectors = Path("glove.hdf5");
  WriteAnnBenchmarks(vectors);
  const std::string payloads = Write("payloads.jsonl", "{\"i\": 0}\n{\"i\": 1}\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.records.size(), 2u);
  EXPECT_EQ(r.records[0].payload_json, "{\"i\":0}");
  EXPECT_EQ(r.records[1].payload_json, "{\"i\":1}");
}

TEST_F(ReadersTest, PayloadFileWithFewerLinesIsDataLoss) {
  const std::string vectors = Write("base.fvecs", Fvecs(kRows));
  const std::string payloads = Write("payloads.jsonl", "{\"a\": 1}\n{\"a\": 2}\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  EXPECT_EQ(r.records.size(), 2u);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {payloads, "fewer"});
}

TEST_F(ReadersTest, PayloadFileWithMoreLinesIsDataLoss) {
  const std::string vectors = Write("base.fvecs", Fvecs(kRows));
  const std::string payloads = Write("payloads.jsonl", "{}\n{}\n{}\n{\"extra\": 1}\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  EXPECT_EQ(r.records.size(), 3u);
  ExpectError(r.status, absl::StatusCode::kDataLoss, {payloads, "more lines"});
}

TEST_F(ReadersTest, PayloadLineThatIsNotJsonIsInvalidArgument) {
  const std::string vectors = Write("base.fvecs", Fvecs(kRows));
  const std::string payloads = Write("payloads.jsonl", "{\"a\": 1}\n{not json\n{\"a\": 3}\n");
  auto reader = OpenReader(vectors, WithPayloads(payloads));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Next().ok());
  ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument, {payloads, "line 2"});
  auto r3 = (*reader)->Next();
  ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
  EXPECT_EQ((*r3)->num_id, std::optional<uint64_t>(2));
  EXPECT_EQ((*r3)->payload_json, "{\"a\":3}");
}

TEST_F(ReadersTest, PayloadLineThatIsNotAnObjectIsInvalidArgument) {
  const std::string vectors = Write("base.fvecs", Fvecs({{1}}));
  const std::string payloads = Write("payloads.jsonl", "[1, 2]\n");
  auto r = ReadAll(vectors, WithPayloads(payloads));
  ExpectError(r.status, absl::StatusCode::kInvalidArgument, {payloads, "line 1"});
}

TEST_F(ReadersTest, PayloadsStayInStepAfterABadVectorRecord) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::string vectors = Write("base.fvecs", Fvecs({{1}, {nan}, {3}}));
  const std::string payloads = Write("payloads.jsonl", "{\"p\": 1}\n{\"p\": 2}\n{\"p\": 3}\n");
  auto reader = OpenReader(vectors, WithPayloads(payloads));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Next().ok());
  ExpectError((*reader)->Next().status(), absl::StatusCode::kInvalidArgument,
              {vectors, "record 2"});
  auto r3 = (*reader)->Next();
  ASSERT_TRUE(r3.ok() && r3->has_value()) << r3.status();
  EXPECT_EQ((*r3)->payload_json, "{\"p\":3}");
  auto end = (*reader)->Next();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_FALSE(end->has_value());
}

TEST_F(ReadersTest, PayloadsWithJsonlIsInvalidArgument) {
  const std::string vectors = Write("docs.jsonl", kJsonl);
  const std::string payloads = Write("payloads.jsonl", "{}\n{}\n{}\n{}\n");
  auto r = OpenReader(vectors, WithPayloads(payloads));
  ExpectError(r.status(), absl::StatusCode::kInvalidArgument, {vectors, "payload"});
}

TEST_F(ReadersTest, MissingPayloadFileIsNotFound) {
  const std::string vectors = Write("base.fvecs", Fvecs(kRows));
  const std::string payloads = Path("absent.jsonl");
  auto r = OpenReader(vectors, WithPayloads(payloads));
  ExpectError(r.status(), absl::StatusCode::kNotFound, {payloads});
}

// ---- Progress ------------------------------------------------------------------

// Reads every record, checking bytes() grows with each and fraction() stays
// in [0, 1] and never goes back; returns the reader for end-state checks.
std::unique_ptr<RecordReader> ReadWithProgress(const std::string& path, size_t want_records) {
  auto reader = OpenReader(path, {});
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return nullptr;
  uint64_t bytes = (*reader)->bytes();
  double fraction = (*reader)->fraction();
  size_t n = 0;
  while (true) {
    auto rec = (*reader)->Next();
    EXPECT_TRUE(rec.ok()) << rec.status();
    if (!rec.ok() || !rec->has_value()) break;
    ++n;
    EXPECT_GT((*reader)->bytes(), bytes) << "record " << n;
    EXPECT_GE((*reader)->fraction(), fraction) << "record " << n;
    EXPECT_LE((*reader)->fraction(), 1.0);
    bytes = (*reader)->bytes();
    fraction = (*reader)->fraction();
  }
  EXPECT_EQ(n, want_records);
  return *std::move(reader);
}

TEST_F(ReadersTest, BytesGrowAndFractionReachesOne) {
  const std::string bytes = Fvecs(kRows);
  auto reader = ReadWithProgress(Write("base.fvecs", bytes), kRows.size());
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->bytes(), bytes.size());
  EXPECT_NEAR(reader->fraction(), 1.0, 1e-9);
}

TEST_F(ReadersTest, FractionTracksALargeFile) {
  // 4 MiB of fvecs, more than the reader buffers at once.
  Rows rows(8192, std::vector<float>(127, 0.5f));
  const std::string bytes = Fvecs(rows);
  const std::string path = Write("big.fvecs", bytes);
  auto reader = OpenReader(path, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->Next().ok());
  EXPECT_LT((*reader)->fraction(), 0.9) << "after the first of 8192 records";
  reader = nullptr;
  auto all = ReadWithProgress(path, rows.size());
  ASSERT_NE(all, nullptr);
  EXPECT_EQ(all->bytes(), bytes.size());
  EXPECT_NEAR(all->fraction(), 1.0, 1e-9);
}

TEST_F(ReadersTest, JsonlBytesCountTheWholeFile) {
  auto reader = ReadWithProgress(Write("docs.jsonl", kJsonl), 4);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->bytes(), std::string(kJsonl).size());
  EXPECT_NEAR(reader->fraction(), 1.0, 1e-9);
}

TEST_F(ReadersTest, GzipBytesCountTheDecompressedStream) {
  const std::string bytes = Fvecs(kRows);
  auto reader = ReadWithProgress(Write("base.fvecs.gz", bytes), kRows.size());
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->bytes(), bytes.size());
  EXPECT_NEAR(reader->fraction(), 1.0, 1e-9);
}

TEST_F(ReadersTest, Hdf5ProgressReachesOne) {
  const std::string path = Path("glove.hdf5");
  WriteAnnBenchmarks(path);
  auto reader = ReadWithProgress(path, kTrain.size());
  ASSERT_NE(reader, nullptr);
  EXPECT_NEAR(reader->fraction(), 1.0, 1e-9);
}

// ---- stdin ---------------------------------------------------------------------

// Puts a file on stdin (fd 0) for the life of the object.
class StdinFrom {
 public:
  explicit StdinFrom(const std::string& path) : saved_(dup(STDIN_FILENO)) {
    int fd = open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0) << path;
    dup2(fd, STDIN_FILENO);
    close(fd);
  }
  ~StdinFrom() {
    dup2(saved_, STDIN_FILENO);
    close(saved_);
  }

 private:
  int saved_;
};

TEST_F(ReadersTest, StdinWithExplicitFormat) {
  const std::string path = Write("docs.jsonl", kJsonl);
  StdinFrom in(path);
  auto reader = OpenReader("-", Format("jsonl"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto r = ReadRest(**reader);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectJsonlRecords(r.records);
  EXPECT_EQ((*reader)->bytes(), std::string(kJsonl).size());
  EXPECT_EQ((*reader)->fraction(), 0.0) << "the size of stdin is unknown";
}

// BUG (cli/readers.cc, OpenReader -> DetectFormat): "-" has no suffix, so
// DetectFormat opens stdin and reads its first bytes (zlib reads up to its
// 1 MiB buffer) to sniff the format; OpenReader then opens stdin again and
// reads on from where that left off. `cairn ingest` defaults to --format auto,
// so a piped file gives no records (or loses its first MiB) and no error.
// Disabled until fixed (e.g. reject "-" with "auto", or sniff and keep the
// bytes).
TEST_F(ReadersTest, StdinWithAutoFormat) {
  const std::string path = Write("base.fvecs", Fvecs(kRows));
  StdinFrom in(path);
  auto r = ReadAll("-");
  ASSERT_TRUE(r.status.ok()) << r.status;
  ExpectPositional(r.records, kRows);
}

}  // namespace
}  // namespace cairn::cli
