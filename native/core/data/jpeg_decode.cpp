#include "core/data/jpeg_decode.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/data/resample.h"

#ifdef ONESTAGE_WITH_JPEG
#include <csetjmp>

#include <jpeglib.h>
#endif

namespace onestage {

#ifdef ONESTAGE_WITH_JPEG

namespace {

/// The file into `bytes` (reused), its first `most` bytes at the most; false with the reason when it
/// cannot be read.
bool readFile(const std::string& file, std::vector<uint8_t>& bytes, std::string& reason, size_t most = SIZE_MAX) {
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (!f) {
    reason = "cannot open the file";
    return false;
  }
  bool ok = std::fseek(f, 0, SEEK_END) == 0;
  const long size = ok ? std::ftell(f) : -1;
  ok = size > 0 && std::fseek(f, 0, SEEK_SET) == 0;
  if (ok) {
    bytes.resize(std::min(static_cast<size_t>(size), most));
    ok = std::fread(bytes.data(), 1, bytes.size(), f) == bytes.size();
  }
  std::fclose(f);
  if (!ok) reason = "cannot read the file";
  return ok;
}

/// libjpeg's error manager, leaving by longjmp on an error or a warning (corrupt data: the caller
/// declines the file, as sharp with failOn 'warning' refuses it).
struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void onError(j_common_ptr c) {
  auto* e = reinterpret_cast<ErrorManager*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

void onMessage(j_common_ptr c, int level) {
  if (level < 0) onError(c);  // a warning; trace messages (level ≥ 0) are ignored
}

bool hasIccProfile(const jpeg_decompress_struct& cinfo) {
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 2 && m->data_length >= 12 && std::memcmp(m->data, "ICC_PROFILE", 12) == 0) return true;
  return false;
}

/// What the libjpeg stage needs and gives; plain data only (the stage longjmps).
struct Stage {
  const uint8_t* data;
  size_t size;
  const JpegRequest* request;
  bool headerOnly;  // stop after the header (the source size)
  // where a picture that needs no resize, flip or window goes straight (the caller's buffer)
  uint8_t* direct;
  size_t directCapacity;
  // out: decoded size, DCT shrink, the source size, whether `direct` holds the result, or a reason to decline
  int width, height, shrink, sourceWidth, sourceHeight;
  bool decodedDirect;
  bool lasting;  // declined for what the file is (JpegOutcome::lasting)
  char reason[JMSG_LENGTH_MAX + 64];
};

/// Reads the header, picks the DCT scaling, decodes into `pixels` (resized to the decoded size × 3) or,
/// when the picture is the output as it is, into `direct`.
/// 0: decoded; 1: declined (stage.reason).
int decodeStage(Stage& s, std::vector<uint8_t>& pixels) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = onError;
  err.pub.emit_message = onMessage;
  if (setjmp(err.jump)) {
    std::snprintf(s.reason, sizeof s.reason, "libjpeg: %s", err.message);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, s.data, static_cast<unsigned long>(s.size));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 2, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  s.sourceWidth = static_cast<int>(cinfo.image_width);
  s.sourceHeight = static_cast<int>(cinfo.image_height);
  if (s.headerOnly) {
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  const auto decline = [&](const char* why, bool lasting) {
    std::snprintf(s.reason, sizeof s.reason, "%s", why);
    s.lasting = lasting;
    jpeg_destroy_decompress(&cinfo);
    return 1;
  };
  if (cinfo.jpeg_color_space != JCS_GRAYSCALE && cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB)
    return decline("colour space other than greyscale, YCbCr or RGB (CMYK, YCCK)", true);
  if (hasIccProfile(cinfo)) return decline("embedded ICC profile (sharp converts it to sRGB)", true);
  const JpegRequest& r = *s.request;
  const uint64_t W = cinfo.image_width, H = cinfo.image_height;
  if (W * H > r.maxPixels) return decline("more pixels than the limit", false);
  // Pillow's draft rule for twice the target size
  int shrink = 1;
  if (r.width > 0) {
    const uint64_t most = std::min(W / (2 * static_cast<uint64_t>(r.width)), H / (2 * static_cast<uint64_t>(r.height)));
    for (int d : {8, 4, 2})
      if (most >= static_cast<uint64_t>(d)) {
        shrink = d;
        break;
      }
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned>(shrink);
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3) return decline("libjpeg did not decode to 3 components", true);
  s.width = static_cast<int>(cinfo.output_width);
  s.height = static_cast<int>(cinfo.output_height);
  s.shrink = shrink;
  const size_t stride = static_cast<size_t>(s.width) * 3;
  const bool same = shrink == 1 && (r.width == 0 || (r.width == s.width && r.height == s.height));
  s.decodedDirect = same && !r.flip && r.extractWidth == 0 && stride * s.height <= s.directCapacity;
  uint8_t* dest = s.direct;
  if (!s.decodedDirect) {
    pixels.resize(stride * s.height);
    dest = pixels.data();
  }
  JSAMPROW rows[16];
  while (cinfo.output_scanline < cinfo.output_height) {
    const JDIMENSION at = cinfo.output_scanline;
    const JDIMENSION n = std::min<JDIMENSION>(16, cinfo.output_height - at);
    for (JDIMENSION i = 0; i < n; ++i) rows[i] = dest + (at + i) * stride;
    jpeg_read_scanlines(&cinfo, rows, n);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

}  // namespace

bool jpegDecoderAvailable() { return true; }

std::string jpegDecoderVersion() {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
  const int v = LIBJPEG_TURBO_VERSION_NUMBER;
  return std::to_string(v / 1000000) + "." + std::to_string(v / 1000 % 1000) + "." + std::to_string(v % 1000);
#else
  return "libjpeg " + std::to_string(JPEG_LIB_VERSION);
#endif
}

/// Gives back a thread's scratch memory that one very large picture grew far beyond the usual (the
/// vectors otherwise keep their size, so that decoding touches no fresh memory).
static void trim(std::vector<uint8_t>& v) {
  if (v.capacity() > (size_t{64} << 20) && v.capacity() > 4 * v.size()) v.shrink_to_fit();
}

JpegOutcome decodeJpegFile(const JpegRequest& r, uint8_t* out, size_t capacity) {
  thread_local std::vector<uint8_t> bytes, pixels, resized;
  struct Trim {
    ~Trim() {
      trim(bytes);
      trim(pixels);
      trim(resized);
    }
  } trimmed;
  JpegOutcome o;
  if (!readFile(r.file, bytes, o.reason)) return o;
  if (bytes.size() < 3 || bytes[0] != 0xFF || bytes[1] != 0xD8 || bytes[2] != 0xFF) {
    o.reason = "not a JPEG";
    o.lasting = true;
    return o;
  }
  Stage s{};
  s.data = bytes.data();
  s.size = bytes.size();
  s.request = &r;
  s.direct = out;
  s.directCapacity = capacity;
  if (decodeStage(s, pixels) != 0) {
    o.reason = s.reason;
    o.lasting = s.lasting;
    return o;
  }
  const int tw = r.width > 0 ? r.width : s.sourceWidth, th = r.width > 0 ? r.height : s.sourceHeight;
  const bool extract = r.extractWidth > 0;
  if (extract && (r.extractLeft < 0 || r.extractTop < 0 || r.extractHeight < 1 || r.extractLeft + r.extractWidth > tw ||
                  r.extractTop + r.extractHeight > th)) {
    o.reason = "the window to extract lies outside the resized picture";
    return o;
  }
  o.width = extract ? r.extractWidth : tw;
  o.height = extract ? r.extractHeight : th;
  if (static_cast<size_t>(o.width) * o.height * 3 > capacity) {
    o.reason = "the output does not fit the buffer";
    return o;
  }
  // the window of the decoded picture that maps to the whole source: (0, 0, W/s, H/s), Pillow's float box
  const ResampleBox box{0.f, 0.f, static_cast<float>(static_cast<double>(s.sourceWidth) / s.shrink),
                        static_cast<float>(static_cast<double>(s.sourceHeight) / s.shrink)};
  o.shrink = s.shrink;
  o.decoded = true;
  if (s.decodedDirect) return o;
  uint8_t* target = out;
  if (extract) {
    resized.resize(static_cast<size_t>(tw) * th * 3);
    target = resized.data();
  }
  resampleBilinear(pixels.data(), s.width, s.height, static_cast<size_t>(s.width) * 3, box, target, tw, th, r.flip);
  if (extract) {
    const size_t row = static_cast<size_t>(r.extractWidth) * 3;
    for (int y = 0; y < r.extractHeight; ++y)
      std::memcpy(out + y * row, resized.data() + (static_cast<size_t>(r.extractTop + y) * tw + r.extractLeft) * 3, row);
  }
  return o;
}

JpegHeader readJpegHeader(const std::string& file) {
  thread_local std::vector<uint8_t> bytes;
  JpegHeader h;
  // the frame header is near the start unless large metadata (an EXIF thumbnail, an ICC profile) comes first
  constexpr size_t kPrefix = 64 << 10;
  for (const size_t most : {kPrefix, SIZE_MAX}) {
    if (!readFile(file, bytes, h.reason, most)) return h;
    if (bytes.size() < 3 || bytes[0] != 0xFF || bytes[1] != 0xD8 || bytes[2] != 0xFF) {
      h.reason = "not a JPEG";
      h.lasting = true;
      return h;
    }
    const JpegRequest none;
    std::vector<uint8_t> unused;  // no pixels: the stage stops after the header
    Stage s{};
    s.data = bytes.data();
    s.size = bytes.size();
    s.request = &none;
    s.headerOnly = true;
    if (decodeStage(s, unused) == 0) {
      h.read = true;
      h.width = s.sourceWidth;
      h.height = s.sourceHeight;
      return h;
    }
    h.reason = s.reason;
    if (bytes.size() < most) break;  // the whole file was read: a real error
  }
  trim(bytes);
  return h;
}

#else  // built without libjpeg

JpegHeader readJpegHeader(const std::string&) {
  JpegHeader h;
  h.reason = "onestage was built without libjpeg-turbo";
  return h;
}

bool jpegDecoderAvailable() { return false; }

std::string jpegDecoderVersion() { return ""; }

JpegOutcome decodeJpegFile(const JpegRequest&, uint8_t*, size_t) {
  JpegOutcome o;
  o.reason = "onestage was built without libjpeg-turbo";
  return o;
}

#endif

}  // namespace onestage
