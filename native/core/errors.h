// Exception types thrown by native/core for bad arguments. The binding turns them into the
// JavaScript error of the same name; anything else (c10::Error, std::exception) becomes an Error.
#pragma once
#include <stdexcept>
#include <string>

namespace onestage {

/// A value of the wrong kind: wrong dtype, wrong number of dimensions, a disposed tensor.
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A value of the right kind outside its allowed range: a negative size, a dim out of range,
/// a CUDA device index that does not exist, an unknown enumeration value.
struct RangeError : std::out_of_range {
  using std::out_of_range::out_of_range;
};

}  // namespace onestage
