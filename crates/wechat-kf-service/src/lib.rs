//! wechat-kf-service
