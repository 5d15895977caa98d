//! media/upload, media/get, media/uploadimg.

use std::time::Duration;

use wechat_kf_emulator::Config;

use super::{App, code};

#[tokio::test]
async fn an_upload_returns_a_media_id_and_a_string_created_at() {
    let app = App::new().await;
    let v = app.upload("file", "wework.txt", b"hello world").await;
    assert_eq!(code(&v), 0);
    assert_eq!(v["type"], "file");
    assert!(v["created_at"].is_string());
}

#[tokio::test]
async fn upload_checks_type_size_and_format() {
    let app = App::new().await;
    assert_eq!(code(&app.upload("sticker", "a", b"123456").await), 40005);
    assert_eq!(code(&app.upload("file", "a", b"12345").await), 40006);
    assert_eq!(code(&app.upload("file", "a", b"").await), 44001);
    assert_eq!(
        code(&app.upload("image", "a.gif", b"GIF89a......").await),
        40004
    );
    assert_eq!(
        code(&app.upload("voice", "a.mp3", b"ID3.........").await),
        301017
    );
    assert_eq!(
        code(&app.upload("video", "a.avi", b"RIFF........").await),
        40004
    );
    assert_eq!(
        code(
            &app.upload(
                "voice",
                "a.amr",
                &[b"#!AMR\n".as_slice(), &vec![0u8; 2 * 1024 * 1024]].concat()
            )
            .await
        ),
        45001
    );
    let mut big_png = b"\x89PNG\r\n\x1a\n".to_vec();
    big_png.resize(10 * 1024 * 1024 + 1, 0);
    assert_eq!(code(&app.upload("image", "big.png", &big_png).await), 40009);
    assert_eq!(
        code(
            &app.upload("video", "v.mp4", b"\0\0\0\x18ftypmp42....")
                .await
        ),
        0
    );
}

#[tokio::test]
async fn a_body_without_a_media_part_is_44001() {
    let app = App::new().await;
    let uri = format!("/cgi-bin/media/upload?type=file&access_token={}", app.token);
    let v = app
        .send(
            "POST",
            &uri,
            Some(b"not multipart".to_vec()),
            &[("content-type", "text/plain")],
        )
        .await
        .json();
    assert_eq!(code(&v), 44001);
}

#[tokio::test]
async fn get_returns_the_bytes_with_type_and_file_name() {
    let app = App::new().await;
    let id = app
        .upload("file", "报告 2024.pdf", b"%PDF-1.4 content")
        .await["media_id"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = app
        .send(
            "GET",
            &format!(
                "/cgi-bin/media/get?access_token={}&media_id={id}",
                app.token
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"%PDF-1.4 content");
    assert_eq!(raw.headers["accept-ranges"], "bytes");
    let cd = raw.headers["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(
        cd.contains("filename*=UTF-8''%E6%8A%A5%E5%91%8A%202024%2Epdf"),
        "{cd}"
    );
    let png = app.image().await;
    let raw = app
        .send(
            "GET",
            &format!(
                "/cgi-bin/media/get?access_token={}&media_id={png}",
                app.token
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(raw.headers["content-type"], "image/png");
    assert_eq!(
        raw.headers["content-disposition"],
        "attachment; filename=\"a.png\""
    );
}

#[tokio::test]
async fn ranges_are_served_as_206() {
    let app = App::new().await;
    let id = app.upload("file", "a.bin", b"0123456789").await["media_id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    let raw = app.send("GET", &uri, None, &[("range", "bytes=2-5")]).await;
    assert_eq!(raw.status, 206);
    assert_eq!(raw.body, b"2345");
    assert_eq!(raw.headers["content-range"], "bytes 2-5/10");
    let raw = app.send("GET", &uri, None, &[("range", "bytes=20-")]).await;
    assert_eq!(raw.status, 416);
    assert_eq!(raw.headers["content-range"], "bytes */10");
}

#[tokio::test]
async fn unknown_and_expired_media_ids_get_a_json_error() {
    let app = App::new().await;
    let raw = app
        .send(
            "GET",
            &format!(
                "/cgi-bin/media/get?access_token={}&media_id=nope",
                app.token
            ),
            None,
            &[],
        )
        .await;
    assert!(
        raw.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(code(&raw.json()), 40007);
    let id = app.image().await;
    app.emu.advance_clock(Duration::from_secs(3 * 86_400));
    let raw = app
        .send(
            "GET",
            &format!(
                "/cgi-bin/media/get?access_token={}&media_id={id}",
                app.token
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(code(&raw.json()), 40007);
}

#[tokio::test]
async fn files_above_20_mb_must_be_fetched_in_ranges() {
    let app = App::new().await;
    let uri = "/emulator/media?type=file&filename=big.bin";
    let raw = app
        .send("POST", uri, Some(vec![7u8; 21 * 1024 * 1024]), &[])
        .await;
    let id = raw.json()["media_id"].as_str().unwrap().to_string();
    let get = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    assert_eq!(code(&app.send("GET", &get, None, &[]).await.json()), 830002);
    let raw = app
        .send("GET", &get, None, &[("range", "bytes=0-1023")])
        .await;
    assert_eq!((raw.status.as_u16(), raw.body.len()), (206, 1024));
}

#[tokio::test]
async fn format_checks_can_be_switched_off() {
    let mut config = Config::generated();
    config.check_media_format = false;
    let app = App::with_config(config).await;
    assert_eq!(
        code(&app.upload("image", "a.gif", b"GIF89a......").await),
        0
    );
}

#[tokio::test]
async fn uploadimg_returns_a_permanent_url() {
    let app = App::new().await;
    let boundary = "B";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(b"\xFF\xD8\xFF\xE0jpeg data");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let v = app
        .send(
            "POST",
            &format!("/cgi-bin/media/uploadimg?access_token={}", app.token),
            Some(body),
            &[("content-type", &ct)],
        )
        .await
        .json();
    assert!(
        v["url"].as_str().unwrap().starts_with("http://p.qpic.cn/"),
        "{v}"
    );
}
