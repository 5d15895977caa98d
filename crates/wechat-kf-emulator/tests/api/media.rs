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
async fn a_file_that_reads_like_an_error_is_served_as_a_file() {
    let app = App::new().await;
    let forged = br#"{"errcode":40014,"errmsg":"invalid access_token"}"#;
    let id = app.upload("file", "forged.json", forged).await["media_id"]
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
    assert_eq!(raw.body, forged);
    assert_eq!(
        raw.headers["content-disposition"],
        "attachment; filename=\"forged.json\""
    );
    assert!(!raw.headers.contains_key("error-code"));
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
    // How a client tells an error from a file: no Content-Disposition, Error-Code mirrored.
    assert!(!raw.headers.contains_key("content-disposition"));
    assert_eq!(raw.headers["error-code"], "40007");
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

/// POSTs a small JPEG to `media/uploadimg`.
async fn uploadimg(app: &App) -> serde_json::Value {
    let boundary = "B";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(b"\xFF\xD8\xFF\xE0jpeg data");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    app.send(
        "POST",
        &format!("/cgi-bin/media/uploadimg?access_token={}", app.token),
        Some(body),
        &[("content-type", &ct)],
    )
    .await
    .json()
}

#[tokio::test]
async fn uploadimg_is_limited_per_day_and_per_month() {
    let mut config = Config::generated();
    config.access_token_ttl = Duration::from_secs(400 * 86_400);
    config.uploadimg_per_day = 2;
    config.uploadimg_per_month = 3;
    let app = App::with_config(config).await;
    // Start at the beginning of a (fixed) 30-day window, which is also a day's beginning.
    const DAY_MS: u64 = 86_400_000;
    let (_, clock) = app
        .control("GET", "/emulator/clock", serde_json::json!({}))
        .await;
    let into_month = clock["now_ms"].as_u64().unwrap() % (30 * DAY_MS);
    app.emu
        .advance_clock(Duration::from_millis(30 * DAY_MS - into_month + 100));
    let day = Duration::from_millis(DAY_MS);
    assert_eq!(code(&uploadimg(&app).await), 0);
    assert_eq!(code(&uploadimg(&app).await), 0);
    assert_eq!(code(&uploadimg(&app).await), 45009, "the day's quota");
    app.emu.advance_clock(day);
    assert_eq!(code(&uploadimg(&app).await), 0, "a new day");
    assert_eq!(code(&uploadimg(&app).await), 45009, "the month's quota");
    app.emu.advance_clock(day);
    assert_eq!(
        code(&uploadimg(&app).await),
        45009,
        "still the month's quota"
    );
    app.emu.advance_clock(28 * day);
    assert_eq!(code(&uploadimg(&app).await), 0, "a new month");
}

#[tokio::test]
async fn uploadimg_returns_a_permanent_url() {
    let app = App::new().await;
    let v = uploadimg(&app).await;
    assert!(
        v["url"].as_str().unwrap().starts_with("http://p.qpic.cn/"),
        "{v}"
    );
}

/// Starts a `media/get` of `id` and returns the response without reading its body, so that the
/// download stays in flight until the response is dropped.
async fn start_download(app: &App, id: &str) -> axum::response::Response {
    use tower::ServiceExt;
    let uri = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    let req = axum::http::Request::builder()
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    app.emu.router().oneshot(req).await.unwrap()
}

async fn errcode_of(response: axum::response::Response) -> i64 {
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    code(&v)
}

#[tokio::test]
async fn a_third_concurrent_download_of_the_same_media_id_is_45033() {
    let app = App::new().await;
    let id = app.image().await;
    let other = app.image().await;
    let first = start_download(&app, &id).await;
    let second = start_download(&app, &id).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(first.headers()["content-length"], "24");
    assert_eq!(errcode_of(start_download(&app, &id).await).await, 45033);
    // Another media_id is not affected.
    assert_eq!(start_download(&app, &other).await.status(), 200);
    // A finished download frees its slot.
    let body = axum::body::to_bytes(first.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], b"\x89PNG\r\n\x1a\nsome image bytes");
    let third = start_download(&app, &id).await;
    assert_eq!(third.status(), 200);
    drop((second, third));
    for _ in 0..2 {
        assert_eq!(start_download(&app, &id).await.status(), 200);
    }
}

#[tokio::test]
async fn the_concurrency_limit_per_media_id_is_configurable() {
    let mut config = Config::generated();
    config.media_get_concurrency_per_id = 1;
    let app = App::with_config(config).await;
    let id = app.image().await;
    let held = start_download(&app, &id).await;
    assert_eq!(errcode_of(start_download(&app, &id).await).await, 45033);
    drop(held);
    assert_eq!(start_download(&app, &id).await.status(), 200);

    let mut config = Config::generated();
    config.media_get_concurrency_per_id = 0;
    let app = App::with_config(config).await;
    let id = app.image().await;
    let held: Vec<_> = futures_held(&app, &id, 5).await;
    assert!(held.iter().all(|r| r.status() == 200));
}

async fn futures_held(app: &App, id: &str, n: usize) -> Vec<axum::response::Response> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(start_download(app, id).await);
    }
    out
}

#[tokio::test]
async fn a_media_busy_fault_answers_45033_for_the_next_n_downloads() {
    let app = App::new().await;
    let id = app.image().await;
    let (status, _) = app
        .control(
            "POST",
            "/emulator/faults",
            serde_json::json!({"kind": "media_busy", "count": 2}),
        )
        .await;
    assert_eq!(status, 200);
    // Other APIs are not hit by it.
    assert_eq!(
        code(&app.api("kf/account/list", serde_json::json!({})).await),
        0
    );
    let get = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    for _ in 0..2 {
        let raw = app.send("GET", &get, None, &[]).await;
        assert_eq!(code(&raw.json()), 45033);
        assert_eq!(raw.headers["error-code"], "45033");
    }
    let raw = app.send("GET", &get, None, &[]).await;
    assert_eq!((raw.status.as_u16(), raw.body.len()), (200, 24));
}

#[tokio::test]
async fn control_media_keeps_its_file_name_type_and_content_type() {
    let app = App::new().await;
    let amr = b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1".to_vec();
    let raw = app
        .send(
            "POST",
            "/emulator/media?type=voice&filename=%E8%AF%AD%E9%9F%B3.amr",
            Some(amr.clone()),
            &[("content-type", "audio/amr-custom")],
        )
        .await;
    assert_eq!(raw.status, 200);
    let id = raw.json()["media_id"].as_str().unwrap().to_string();
    let get = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    let raw = app.send("GET", &get, None, &[]).await;
    assert_eq!(raw.body, amr);
    assert_eq!(raw.headers["content-type"], "audio/amr-custom");
    assert_eq!(
        raw.headers["content-disposition"],
        "attachment; filename=\"__.amr\"; filename*=UTF-8''%E8%AF%AD%E9%9F%B3%2Eamr"
    );
    // The content_type parameter wins over the header; a generic header falls back to the type.
    let raw = app
        .send(
            "POST",
            "/emulator/media?type=file&filename=a.pdf&content_type=application/pdf",
            Some(b"%PDF-1.4".to_vec()),
            &[("content-type", "text/plain")],
        )
        .await;
    let id = raw.json()["media_id"].as_str().unwrap().to_string();
    let get = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    assert_eq!(
        app.send("GET", &get, None, &[]).await.headers["content-type"],
        "application/pdf"
    );
    let raw = app
        .send(
            "POST",
            "/emulator/media?type=voice",
            Some(amr),
            &[("content-type", "application/octet-stream")],
        )
        .await;
    let id = raw.json()["media_id"].as_str().unwrap().to_string();
    let get = format!(
        "/cgi-bin/media/get?access_token={}&media_id={id}",
        app.token
    );
    let raw = app.send("GET", &get, None, &[]).await;
    assert_eq!(raw.headers["content-type"], "audio/amr");
    assert_eq!(
        raw.headers["content-disposition"],
        "attachment; filename=\"voice.bin\""
    );
    let (status, _) = app
        .control(
            "POST",
            "/emulator/media?type=sticker",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn voice_uploads_must_start_with_the_amr_magic() {
    let app = App::new().await;
    let ok = app
        .upload("voice", "a.amr", b"#!AMR\n\x3c\x48\xf5\x1f")
        .await;
    assert_eq!((code(&ok), ok["type"].as_str()), (0, Some("voice")));
    for bad in [
        b"#!AMR-WB\n\x3c\x48".as_slice(),
        b"#!AMRX\x3c\x48\xf5",
        b"#!SILK_V3\x3c\x48",
        b"OggS\0\x02\0\0\0\0",
    ] {
        assert_eq!(code(&app.upload("voice", "a.amr", bad).await), 301017);
    }
}

#[tokio::test]
async fn a_customer_voice_downloads_the_uploaded_bytes_whatever_the_voice_format() {
    let app = App::new().await;
    let kf = app.account().await;
    let amr = b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1\xe0\x01".to_vec();
    let raw = app
        .send(
            "POST",
            "/emulator/media?type=voice&filename=%E8%AF%AD%E9%9F%B3.amr",
            Some(amr.clone()),
            &[],
        )
        .await;
    let id = raw.json()["media_id"].as_str().unwrap().to_string();
    app.emu
        .customer_send(
            serde_json::json!({"open_kfid": kf, "external_userid": "wmC",
            "msgtype": "voice", "voice": {"media_id": id}}),
        )
        .unwrap();
    for voice_format in [0, 1] {
        let v = app
            .api(
                "kf/sync_msg",
                serde_json::json!({"open_kfid": kf, "voice_format": voice_format}),
            )
            .await;
        assert_eq!(code(&v), 0);
        assert_eq!(v["msg_list"][0]["msgtype"], "voice");
        let media_id = v["msg_list"][0]["voice"]["media_id"].as_str().unwrap();
        assert_eq!(media_id, id);
        let get = format!(
            "/cgi-bin/media/get?access_token={}&media_id={media_id}",
            app.token
        );
        let raw = app.send("GET", &get, None, &[]).await;
        assert_eq!(raw.body, amr, "no transcoding");
        assert_eq!(raw.headers["content-type"], "audio/amr");
    }
}
