use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(toml: &str) -> Result<Config, Error> {
    Config::from_sources(Some(toml), &no_env, Overrides::default())
}

fn error(toml: &str) -> String {
    load(toml).unwrap_err().to_string()
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let toml = "listen = \"127.0.0.1:1\"\n[storage]\ndb = \"file.db\"\n";
    let env = |k: &str| match k {
        "WECHAT_KF_LISTEN" => Some("127.0.0.1:2".to_owned()),
        "WECHAT_KF_DB" => Some("env.db".to_owned()),
        _ => None,
    };
    let config = Config::from_sources(Some(toml), &env, Overrides::default()).unwrap();
    assert_eq!(config.listen.port(), 2);
    assert_eq!(config.db_location(), "env.db");
    let flags = Overrides::default().set("--db", "storage.db", Some("flag.db"));
    let config = Config::from_sources(Some(toml), &env, flags).unwrap();
    assert_eq!(config.db_location(), "flag.db");
}

#[test]
fn unknown_keys_and_bad_values_are_one_line_errors() {
    let err = load("[webhook]\nurll = \"x\"\n").unwrap_err();
    assert!(err.is_config());
    assert!(!err.to_string().contains('\n'), "{err}");
    let err = error("[pull]\nsafety_interval = \"soon\"\n");
    assert!(err.contains("pull.safety_interval"), "{err}");
}

#[test]
fn file_errors_name_the_file_the_key_the_line_and_the_column() {
    let err = error("[webhook]\nurll = \"x\"\n");
    assert!(
        err.contains("config file:2:1: webhook.urll: unknown key"),
        "{err}"
    );
    let err = error("[pull]\n\nsafety_interval = \"soon\"\n");
    assert!(
        err.contains("config file:3:1: pull.safety_interval: \"soon\" is not a duration"),
        "{err}"
    );
    // A setting that contradicts another points at where it is written.
    let err = error("[handoff]\nservice_state = 3\n");
    assert!(
        err.contains("config file:2:1: handoff.service_state: 3 needs"),
        "{err}"
    );
    // Broken TOML: toml's multi-line diagnostic becomes one line.
    let err = error("[pull]\npage_size = = 3\n");
    assert!(err.starts_with("configuration: config file:2:"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    // The old flat file of the operator commands says where credentials go now.
    let err = error("corp_id = \"ww1\"\n");
    assert!(
        err.contains("config file:1:1: corp_id: unknown key"),
        "{err}"
    );
    assert!(err.contains("[wechat]"), "{err}");
}

#[test]
fn bad_environment_values_and_flags_name_the_variable_or_the_flag() {
    let env = |k: &str| (k == "WECHAT_KF_LISTEN").then(|| "everywhere".to_owned());
    let err = Config::from_sources(None, &env, Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("WECHAT_KF_LISTEN (listen): \"everywhere\" is not an address"),
        "{err}"
    );
    let env = |k: &str| (k == "WECHAT_KF_ECHO").then(|| "maybe".to_owned());
    let err = Config::from_sources(None, &env, Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains("WECHAT_KF_ECHO (sandbox.echo)"),
        "{err}"
    );
    let flags = Overrides::default().set("--webhook", "webhook.url", Some("ftp://bot"));
    let err = Config::from_sources(Some("[webhook]\nurl = \"http://x\"\n"), &no_env, flags);
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("--webhook (webhook.url): must be an http(s) URL"),
        "{err}"
    );
}

#[test]
fn the_old_variable_names_still_work_but_the_new_ones_win() {
    let old = |k: &str| match k {
        "WECHAT_KF_TOKEN" => Some("old-token".to_owned()),
        "WECHAT_KF_AES_KEY" => Some("old-key".to_owned()),
        _ => None,
    };
    let config = Config::from_sources(None, &old, Overrides::default()).unwrap();
    assert_eq!(config.wechat.callback_token.unwrap().expose(), "old-token");
    assert_eq!(config.wechat.encoding_aes_key.unwrap().expose(), "old-key");
    let both = |k: &str| match k {
        "WECHAT_KF_CALLBACK_TOKEN" => Some("new-token".to_owned()),
        other => old(other),
    };
    let config = Config::from_sources(None, &both, Overrides::default()).unwrap();
    assert_eq!(config.wechat.callback_token.unwrap().expose(), "new-token");
}

#[test]
fn credentials_switch_off_the_sandbox_and_must_come_in_pairs() {
    let config = load("[wechat]\ncorp_id = \"ww1\"\nsecret = \"s\"\n").unwrap();
    assert!(!config.is_sandbox());
    assert_eq!(config.db_location(), "wechat-kf.db");
    assert!(load("[wechat]\ncorp_id = \"ww1\"\n").is_err());
    let err = error("[wechat]\ncallback_token = \"t\"\n");
    assert!(
        err.contains("wechat.callback_token: set wechat.encoding_aes_key too"),
        "{err}"
    );
    let env = |k: &str| (k == "WECHAT_KF_ENCODING_AES_KEY").then(|| "k".to_owned());
    let err = Config::from_sources(None, &env, Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains(
            "WECHAT_KF_ENCODING_AES_KEY (wechat.encoding_aes_key): set wechat.callback_token too"
        ),
        "{err}"
    );
    let err = error("[webhook]\nsecret = \"s\"\n");
    assert!(
        err.contains("webhook.secret: signs deliveries to webhook.url, which is not set"),
        "{err}"
    );
    assert!(load("[webhook]\nsecret = \"s\"\nurl = \"http://127.0.0.1:1/\"\n").is_ok());
    let sandbox = Config::from_sources(None, &no_env, Overrides::default()).unwrap();
    assert!(sandbox.is_sandbox());
    assert_eq!(sandbox.db_location(), ":memory:");
}

#[test]
fn secrets_never_show_in_debug_output_or_errors() {
    let toml = "[wechat]\ncorp_id = \"ww1\"\nsecret = \"TOPSECRET1\"\ncallback_token = \"TOPSECRET2\"\n\
                encoding_aes_key = \"TOPSECRET3\"\n[webhook]\nurl = \"http://x\"\nsecret = \"TOPSECRET4\"\n[api]\ntoken = \"TOPSECRET5\"\n";
    let debug = format!("{:?}", load(toml).unwrap());
    assert!(!debug.contains("TOPSECRET"), "{debug}");
    let err = error("[wechat]\nsecret = 12345678\n");
    assert!(
        err.contains("wechat.secret: expected a string, found an integer"),
        "{err}"
    );
    assert!(!err.contains("12345678"), "{err}");
}

#[test]
fn first_start_policies_parse_per_account_and_from_every_source() {
    let toml = "[pull]\nfirst_start = \"since 2h\"\nvoice_format = \"silk\"\n\
                [pull.first_start_accounts]\nwkA = \"replay\"\n";
    let config = load(toml).unwrap();
    assert_eq!(
        config.pull.first_start,
        FirstStart::Since(Duration::from_secs(7200))
    );
    assert_eq!(
        config.pull.first_start_for(&"wkA".into()),
        FirstStart::Replay
    );
    assert_eq!(config.pull.voice_format, VoiceFormat::Silk);
    let env = |k: &str| (k == "WECHAT_KF_FIRST_START").then(|| "replay".to_owned());
    let config = Config::from_sources(None, &env, Overrides::default()).unwrap();
    assert_eq!(config.pull.first_start, FirstStart::Replay);
    let flags = Overrides::default().set(
        "--first-start",
        "pull.first_start",
        Some(FirstStart::FromNow),
    );
    let config = Config::from_sources(None, &env, flags).unwrap();
    assert_eq!(config.pull.first_start, FirstStart::FromNow);
    assert_eq!(Config::default().pull.first_start, FirstStart::FromNow);
    for bad in ["yesterday", "since", "since soon"] {
        let err = bad.parse::<FirstStart>().unwrap_err().to_string();
        assert!(err.contains("pull.first_start"), "{err}");
    }
    assert_eq!(
        "since:30m".parse::<FirstStart>().unwrap(),
        FirstStart::Since(Duration::from_secs(1800))
    );
    // Every source names the key.
    let err = error("[pull]\nfirst_start = \"yesterday\"\n");
    assert!(
        err.contains("config file:2:1: pull.first_start: \"yesterday\" is not"),
        "{err}"
    );
    let err = error("[pull.first_start_accounts]\nwkA = \"later\"\n");
    assert!(err.contains("pull.first_start_accounts.wkA"), "{err}");
    let env = |k: &str| (k == "WECHAT_KF_FIRST_START").then(|| "soon".to_owned());
    let err = Config::from_sources(None, &env, Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("WECHAT_KF_FIRST_START (pull.first_start)"),
        "{err}"
    );
}

#[test]
fn handoff_joiner_and_media_settings_are_checked() {
    let toml = "[handoff]\nkeywords = [\"人工\", \"转人工\"]\nservice_state = 3\nservicer_userid = \"zhangsan\"\n\
                [joiner]\nenabled = true\nwindow_ms = 250\n\
                [media]\ndownload_dir = \"/tmp/m\"\nkinds = [\"voice\"]\nvoice_convert_to = \"wav\"\n";
    let config = load(toml).unwrap();
    assert_eq!(config.handoff.keywords, vec!["人工", "转人工"]);
    assert_eq!(config.handoff.service_state, 3);
    assert!(config.joiner.enabled);
    assert_eq!(config.joiner.window, Duration::from_millis(250));
    assert!(config.media.wants("voice"));
    assert!(!config.media.wants("image"));
    assert_eq!(config.media.voice_convert_to, Some(VoiceTarget::Wav));
    assert!(load("[handoff]\nservice_state = 3\n").is_err());
    assert!(load("[handoff]\nservice_state = 1\n").is_err());
    assert!(error("[media]\nkinds = [\"sticker\"]\n").contains("media.kinds: \"sticker\""));
    assert!(load("[media]\nvoice_convert_to = \"flac\"\n").is_err());
    assert!(!Config::default().media.wants("image"));
    assert!(!Config::default().joiner.enabled);
}

#[test]
fn an_object_store_alone_turns_media_on_and_its_keys_never_print() {
    let toml = "[media]\nobject_store = \"s3://kf-media/inbound\"\n\
                [media.object_store_options]\nregion = \"ap-guangzhou\"\n\
                access_key_id = \"AKID\"\nsecret_access_key = \"s3-secret-value\"\n";
    let config = load(toml).unwrap();
    assert!(config.media.wants("file"));
    assert_eq!(
        config.media.object_store.as_deref(),
        Some("s3://kf-media/inbound")
    );
    assert!(!format!("{config:?}").contains("s3-secret-value"));
    let env =
        |name: &str| (name == "WECHAT_KF_MEDIA_OBJECT_STORE").then(|| "s3://other".to_owned());
    let config = Config::from_sources(Some(toml), &env, Overrides::default()).unwrap();
    assert_eq!(config.media.object_store.as_deref(), Some("s3://other"));
    assert_eq!(config.media.object_store_options.len(), 3);
    // The URL's shape and the S3 options are checked where the bucket is opened, when the
    // service starts (media's unit tests): `wechat-kf serve` exits 2 naming the key (CLI test
    // serve_config).
}

#[test]
fn zero_durations_disable_and_humantime_durations_parse() {
    let config =
        load("[pull]\nsafety_interval = \"0\"\n[storage]\nretention = \"3days\"\n").unwrap();
    assert_eq!(config.pull.safety_interval, Duration::ZERO);
    assert_eq!(config.storage.retention, Duration::from_secs(3 * 86400));
    let config = load("[storage]\nsynchronous = \"FULL\"\n").unwrap();
    assert_eq!(config.storage.synchronous, Synchronous::Full);
}

#[test]
fn the_reference_in_docs_lists_every_variable_and_its_example_file_loads() {
    let docs = include_str!("../../../../docs/service.md");
    for var in ENV {
        for name in std::iter::once(&var.name).chain(var.deprecated) {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} missing in docs/service.md"
            );
        }
        assert!(
            docs.contains(&format!("`{}`", var.key)),
            "{} missing",
            var.key
        );
    }
    let example = docs
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml example in docs/service.md");
    let config = load(example).unwrap_or_else(|e| panic!("the documented example: {e}"));
    assert!(!config.is_sandbox());
}

#[test]
fn a_syntax_error_on_a_secret_line_never_shows_the_secret() {
    for toml in [
        "[wechat]\nsecret = \"TOPSECRET\" extra\n",
        "[wechat]\ncorp_id = \"ww1\"\nsecret = \"TOPSECRET\nx = 1\n",
        "[webhook]\nsecret = 'TOPSECRET' = 2\n",
        "[api]\ntoken = TOPSECRET\n",
    ] {
        let err = error(toml);
        assert!(!err.contains("TOPSECRET"), "{err}");
        assert!(err.contains("config file:"), "{err}");
    }
}

#[test]
fn conversation_stages_are_texts_or_menus_refined_per_account_and_checked() {
    let toml = "[conversation]\nwhile_human = \"hold\"\nwelcome = \"您好\"\nsurvey = [\"满意\", \"不满意\"]\n\
                [conversation.end]\nhead_content = \"再见\"\nlist = [\"再聊聊\"]\n\
                [conversation.scenes]\norder = \"订单 {scene_param}\"\n\
                [conversation.accounts.wkA]\nwhile_human = \"skip\"\nwelcome = \"A 店欢迎您\"\n";
    let config = load(toml).unwrap();
    let c = &config.conversation;
    assert_eq!(c.while_human("wkB"), WhileHuman::Hold);
    assert_eq!(c.while_human("wkA"), WhileHuman::Skip);
    assert_eq!(
        c.stages("wkA").welcome,
        Some(&Stage::Text("A 店欢迎您".into()))
    );
    assert_eq!(c.stages("wkB").welcome, Some(&Stage::Text("您好".into())));
    assert!(matches!(c.stages("wkA").end, Some(Stage::Menu { list, .. }) if list == &["再聊聊"]));
    assert_eq!(c.stages("wkA").survey.len(), 2, "falls back to the default");
    assert!(c.stages("wkA").scenes.contains_key("order"));

    let err = error("[conversation]\nwelcome = \"\"\n");
    assert!(
        err.contains("conversation.welcome: must be a text of 1-2048 bytes"),
        "{err}"
    );
    let err = error("[conversation.queue]\nhead_content = \"x\"\nlist = [\"a\"]\n");
    assert!(err.contains("conversation.queue: must be a text"), "{err}");
    let err = error("[conversation]\nwhile_human = \"ignore\"\n");
    assert!(err.contains("while_human"), "{err}");
}

#[test]
fn responders_are_checked_at_start_naming_the_key() {
    let agent = "[responder]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n";
    let config = load(&format!("{agent}model = \"qwen\"\n")).unwrap();
    assert_eq!(
        config.responder.effective_kind(false),
        ResponderKind::Openai
    );
    assert!(error(agent).contains("responder.model"), "{}", error(agent));
    let with_webhook = format!("{agent}model = \"m\"\n[webhook]\nurl = \"http://127.0.0.1:9/h\"\n");
    assert!(error(&with_webhook).contains("webhook.url"));
    let too_many = format!("{agent}model = \"m\"\nmax_messages = 6\n");
    assert!(error(&too_many).contains("responder.max_messages"));
    let dify = "[responder]\nkind = \"dify\"\nbase_url = \"http://127.0.0.1:5001/v1\"\n";
    assert!(error(dify).contains("responder.api_key"));
    let route = format!(
        "{agent}model = \"m\"\n[[responder.routes]]\nopen_kfid = \"wk1\"\nkind = \"echo\"\n"
    );
    assert!(
        error(&route).contains("responder.routes[0].kind"),
        "{}",
        error(&route)
    );
    let vision = format!("{agent}model = \"m\"\nvision = true\n");
    assert!(error(&vision).contains("media.download_dir"));
    // Flags and variables set the same keys; the key is a secret.
    let env = |k: &str| (k == "WECHAT_KF_LLM_API_KEY").then(|| "sk-secret".to_owned());
    let flags = Overrides::default()
        .set("--responder", "responder.kind", Some("openai"))
        .set(
            "--llm-base-url",
            "responder.base_url",
            Some("http://127.0.0.1:1/v1"),
        )
        .set("--llm-model", "responder.model", Some("m"));
    let config = Config::from_sources(None, &env, flags).unwrap();
    assert_eq!(
        config.responder.api_key.as_ref().unwrap().expose(),
        "sk-secret"
    );
    assert!(!format!("{config:?}").contains("sk-secret"));
    // The echo stays the default of --echo.
    let echo = Overrides::default().switch("--echo", "sandbox.echo", true);
    let config = Config::from_sources(None, &no_env, echo).unwrap();
    assert_eq!(config.responder.effective_kind(true), ResponderKind::Echo);
}

#[test]
fn transcription_needs_voice_downloads() {
    let base = "[responder.transcription]\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    let says = error(base);
    assert!(says.contains("needs media downloads"), "{says}");
    let says = error(&format!(
        "{base}[media]\ndownload_dir = \"/tmp/m\"\nkinds = [\"image\"]\n"
    ));
    assert!(
        says.contains("media.kinds") && says.contains("voice"),
        "{says}"
    );
    let config = load(&format!("{base}[media]\ndownload_dir = \"/tmp/m\"\n")).unwrap();
    let transcription = config.responder.transcription.unwrap();
    assert_eq!(transcription.model, "whisper-1");
    assert_eq!(
        config.media.voice_convert_to, None,
        "wav is chosen by the media fetcher"
    );
}
