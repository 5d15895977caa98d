//! The real media files behind the placeholders: a customer media message injected without a
//! `media_id` gets one of these, so a client can decode, play or convert what it downloads.
//!
//! Each is a few kilobytes, made once for this project (synthetic, not copied from anywhere)
//! and kept in `fixtures/` beside this crate:
//!
//! | file | what | how it was made |
//! |---|---|---|
//! | `image.png` (469 B) | 64×48 PNG of ffmpeg's test pattern | `ffmpeg -f lavfi -i testsrc=size=64x48:rate=1 -frames:v 1 image.png` |
//! | `voice.amr` (3,206 B) | 2.0 s, 440 Hz sine, AMR-NB 12.2 kbit/s (`#!AMR\n`) | the library's `tests/fixtures/voice/sine440-2s.amr` (its README says how: a pure-Rust AMR-NB encoder, as Debian's ffmpeg only decodes AMR) |
//! | `voice.silk` (3,312 B) | 2.0 s, 440 Hz sine at 16 kHz (20 ms fades), SILK v3 at 12 kbit/s with WeChat's `0x02` prefix | `silk_codec::encode_silk(&pcm, 16_000, 12_000, true)` (the SILK SDK the library's `voice-silk` feature decodes with), from a throw-away test |
//! | `video.mp4` (7,958 B) | 2.0 s, 64×48 test pattern at 10 fps (H.264) with a 440 Hz tone (AAC, mono, 16 kbit/s) | `ffmpeg -f lavfi -i testsrc=size=64x48:rate=10 -f lavfi -i sine=frequency=440:sample_rate=16000:duration=2 -t 2 -c:v libx264 -preset veryslow -crf 35 -pix_fmt yuv420p -c:a aac -b:a 16k -ac 1 -movflags +faststart video.mp4` |
//!
//! The placeholder voice note is AMR, what `sync_msg` promises by default (`voice_format` 0).
//! The emulator does not transcode, so for SILK (`voice_format` 1) upload [`VOICE_SILK`]
//! through `POST /emulator/media?type=voice` and send that media_id.

/// A 64×48 PNG test pattern.
pub const IMAGE_PNG: &[u8] = include_bytes!("../fixtures/image.png");
/// 2 s of a 440 Hz tone as AMR-NB.
pub const VOICE_AMR: &[u8] = include_bytes!("../fixtures/voice.amr");
/// 2 s of a 440 Hz tone as SILK v3, with WeChat's `0x02` prefix.
pub const VOICE_SILK: &[u8] = include_bytes!("../fixtures/voice.silk");
/// 2 s of a test pattern with a 440 Hz tone as MP4 (H.264 + AAC).
pub const VIDEO_MP4: &[u8] = include_bytes!("../fixtures/video.mp4");
/// The placeholder of a `file` message: a short UTF-8 text.
pub const FILE_TXT: &[u8] = "This is the wechat-kf emulator's placeholder file.\n\
    这是 wechat-kf 模拟器的占位文件。\n"
    .as_bytes();
