// TensorBoard scalars without TensorFlow or protobuf: a writer of the event files TensorBoard reads
// (`tensorboard --logdir <log_dir>`). Each file is a sequence of TFRecords (little-endian uint64 length,
// masked CRC-32C of the length, the serialized Event, masked CRC-32C of the Event); the Event and Summary
// messages are encoded by hand (trainer/tensorboard.cpp). The first record carries file_version
// "brain.Event:2". Non-finite values are written as they are (TensorBoard shows NaN/Inf). One writer per
// process and directory; not thread-safe. I/O errors are dsrl::Error naming the file.
//
//   TensorBoardWriter tb(cfg.run.output_dir + "/tb");  // events.out.tfevents.<secs>.<host>.<pid>.<n>
//   tb.add_scalars(step, {{"loss/policy", loss}, {"reward/mean", reward}, {"lr", lr}});  // flushed
//   tb.add_scalar("grad/norm", step, norm);
//   tb.flush();
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

namespace dsrl::trainer {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `n` bytes; crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t n);

class TensorBoardWriter {
public:
    /// Creates `log_dir` (and parents) if needed and opens a new event file in it; writes the file_version
    /// record and flushes it.
    explicit TensorBoardWriter(const std::string& log_dir);
    ~TensorBoardWriter();
    TensorBoardWriter(const TensorBoardWriter&) = delete;
    TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
    TensorBoardWriter(TensorBoardWriter&& other) noexcept;
    TensorBoardWriter& operator=(TensorBoardWriter&& other) noexcept;

    /// One scalar at `step`, stamped with the current time (buffered; see flush()).
    void add_scalar(const std::string& tag, int64_t step, double value);
    /// One scalar at `step` with an explicit wall time (seconds since the epoch).
    void add_scalar(const std::string& tag, int64_t step, double value, double wall_time);
    /// Every (tag, value) of `values` at `step` in one Event, stamped with the current time; then flush().
    void add_scalars(int64_t step, const std::map<std::string, double>& values);
    /// Hands everything written so far to the OS (fflush; no fsync).
    void flush();

    /// The event file being written.
    const std::string& path() const { return path_; }

private:
    void write_record(const std::string& data);

    std::string path_;
    std::FILE* file_ = nullptr;
};

/// Resume (trainer/train.cpp): the event files under `log_dir` and their sizes, as a checkpoint cursor ("name\tsize"
/// lines; empty when there are none). Call it after a flush: add_scalars flushes.
std::string tensorboard_cursor(const std::string& log_dir);

/// Cuts `log_dir` back to a cursor of tensorboard_cursor(): each event file it lists to its recorded size (records
/// are appended whole and flushed, so that is a record boundary), every other event file removed — written after
/// the checkpoint, its steps run again. A missing directory is fine. Returns the bytes dropped.
int64_t restore_tensorboard(const std::string& log_dir, const std::string& cursor);

}  // namespace dsrl::trainer
