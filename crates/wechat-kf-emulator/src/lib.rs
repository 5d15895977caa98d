//! wechat-kf-emulator
