//! Property tests: any message built from typed parts survives encode → decode unchanged, and
//! no input at all makes the decoder panic.

use proptest::prelude::*;
use wechat_kf::message::*;
use wechat_kf::*;

fn text() -> impl Strategy<Value = String> {
    // Any unicode, including quotes, backslashes, control characters and astral-plane chars.
    any::<String>()
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn id<T: From<String> + std::fmt::Debug + Clone>() -> impl Strategy<Value = T> {
    "[a-zA-Z0-9_-]{1,40}".prop_map(T::from)
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        id::<MsgId>(),
        proptest::option::of(id::<OpenKfId>()),
        proptest::option::of(id::<ExternalUserId>()),
        any::<u64>(),
        prop_oneof![Just(3u32), Just(4), Just(5), any::<u32>()].prop_map(Origin::from),
        proptest::option::of(id::<UserId>()),
    )
        .prop_map(
            |(msgid, open_kfid, external_userid, send_time, origin, servicer_userid)| Envelope {
                msgid,
                open_kfid,
                external_userid,
                send_time,
                origin,
                servicer_userid,
            },
        )
}

fn menu_item() -> impl Strategy<Value = MenuItem> {
    prop_oneof![
        (opt_text(), text()).prop_map(|(id, content)| MenuItem::Click(MenuClick { id, content })),
        (text(), text()).prop_map(|(url, content)| MenuItem::View(MenuView { url, content })),
        (text(), text(), text()).prop_map(|(appid, pagepath, content)| {
            MenuItem::MiniProgram(MenuMiniProgram {
                appid,
                pagepath,
                content,
            })
        }),
        (text(), proptest::option::of(0u32..2)).prop_map(|(content, no_newline)| MenuItem::Text(
            MenuText {
                content,
                no_newline
            }
        )),
    ]
}

fn finite() -> impl Strategy<Value = f64> {
    -180.0f64..180.0
}

fn event() -> impl Strategy<Value = Event> {
    let ids = || {
        (
            proptest::option::of(id::<OpenKfId>()),
            proptest::option::of(id::<ExternalUserId>()),
        )
    };
    prop_oneof![
        (
            ids(),
            opt_text(),
            opt_text(),
            opt_text(),
            proptest::option::of(0u32..6)
        )
            .prop_map(
                |((open_kfid, external_userid), scene, scene_param, welcome_code, ch)| {
                    Event::from(EnterSession {
                        open_kfid,
                        external_userid,
                        scene,
                        scene_param,
                        welcome_code,
                        wechat_channels: ch.map(|scene| WechatChannels {
                            nickname: Some("n".into()),
                            shop_nickname: None,
                            scene: Some(scene),
                        }),
                    })
                }
            ),
        (
            ids(),
            proptest::option::of(id::<MsgId>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|((open_kfid, external_userid), fail_msgid, fail_type)| {
                Event::from(MsgSendFail {
                    open_kfid,
                    external_userid,
                    fail_msgid,
                    fail_type: fail_type.map(FailType::from),
                })
            }),
        (
            ids(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(0u32..3)
        )
            .prop_map(|((open_kfid, _), status, stop)| {
                Event::from(ServicerStatusChange {
                    open_kfid,
                    servicer_userid: Some("zhangsan".into()),
                    status: status.map(ServicerStatus::from),
                    stop_type: stop.map(StopType::from),
                })
            }),
        (ids(), 0u32..6, opt_text()).prop_map(|((open_kfid, external_userid), c, code)| {
            Event::from(SessionStatusChange {
                open_kfid,
                external_userid,
                change_type: Some(ChangeType::from(c)),
                old_servicer_userid: Some("a".into()),
                new_servicer_userid: None,
                msg_code: code,
            })
        }),
        (ids(), id::<MsgId>()).prop_map(|((open_kfid, external_userid), m)| {
            Event::from(UserRecallMsg {
                open_kfid,
                external_userid,
                recall_msgid: Some(m),
            })
        }),
        (ids(), id::<MsgId>()).prop_map(|((open_kfid, external_userid), m)| {
            Event::from(ServicerRecallMsg {
                open_kfid,
                external_userid,
                recall_msgid: Some(m),
                servicer_userid: Some("s".into()),
            })
        }),
        (ids(), 0u32..3).prop_map(|((open_kfid, external_userid), r)| {
            Event::from(RejectCustomerMsgSwitchChange {
                open_kfid,
                external_userid,
                servicer_userid: None,
                reject_switch: Some(RejectSwitch::from(r)),
            })
        }),
    ]
}

fn content() -> impl Strategy<Value = MessageContent> {
    prop_oneof![
        (text(), opt_text())
            .prop_map(|(content, menu_id)| MessageContent::Text(Text { content, menu_id })),
        id::<MediaId>().prop_map(|media_id| MessageContent::Image(Image { media_id })),
        id::<MediaId>().prop_map(|media_id| MessageContent::Voice(Voice { media_id })),
        id::<MediaId>().prop_map(|media_id| MessageContent::Video(Video { media_id })),
        id::<MediaId>().prop_map(|media_id| MessageContent::File(File { media_id })),
        (finite(), finite(), opt_text(), opt_text()).prop_map(
            |(latitude, longitude, name, address)| {
                MessageContent::Location(Location {
                    latitude,
                    longitude,
                    name,
                    address,
                })
            }
        ),
        (opt_text(), opt_text(), opt_text(), opt_text()).prop_map(|(title, desc, url, pic_url)| {
            MessageContent::from(Link {
                title,
                desc,
                url,
                pic_url,
            })
        }),
        id::<UserId>().prop_map(|userid| MessageContent::BusinessCard(BusinessCard { userid })),
        (
            opt_text(),
            opt_text(),
            opt_text(),
            proptest::option::of(id::<MediaId>())
        )
            .prop_map(|(title, appid, pagepath, thumb_media_id)| {
                MessageContent::from(MiniProgram {
                    title,
                    appid,
                    pagepath,
                    thumb_media_id,
                })
            }),
        (
            opt_text(),
            proptest::collection::vec(menu_item(), 0..6),
            opt_text()
        )
            .prop_map(|(head_content, list, tail_content)| {
                MessageContent::from(MsgMenu {
                    head_content,
                    list,
                    tail_content,
                })
            }),
        (opt_text(), opt_text(), proptest::option::of("[0-9]{1,8}")).prop_map(
            |(product_id, title, sales_price)| {
                MessageContent::from(ChannelsShopProduct {
                    product_id,
                    head_img: None,
                    title,
                    sales_price,
                    shop_nickname: Some("店".into()),
                    shop_head_img: None,
                })
            }
        ),
        (opt_text(), opt_text()).prop_map(|(order_id, state)| {
            MessageContent::from(ChannelsShopOrder {
                order_id,
                product_titles: None,
                price_wording: Some("¥1".into()),
                state,
                image_url: None,
                shop_nickname: None,
            })
        }),
        (
            opt_text(),
            proptest::collection::vec((opt_text(), text()), 0..4)
        )
            .prop_map(|(title, items)| {
                MessageContent::from(MergedMsg {
                    title,
                    item: items
                        .into_iter()
                        .map(|(sender_name, inner)| MergedItem {
                            send_time: Some(1),
                            msgtype: Some("text".into()),
                            sender_name,
                            msg_content: Some(
                                serde_json::json!({"msgtype": "text", "text": {"content": inner}})
                                    .to_string(),
                            ),
                        })
                        .collect(),
                })
            }),
        (proptest::option::of(any::<u32>()), opt_text(), opt_text()).prop_map(
            |(sub, nickname, title)| {
                MessageContent::Channels(Channels {
                    sub_type: sub.map(ChannelsSubType::from),
                    nickname,
                    title,
                })
            }
        ),
        event().prop_map(MessageContent::Event),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_typed_message_round_trips_through_json(envelope in envelope(), content in content()) {
        let built = Message::new(envelope.clone(), content.clone()).unwrap();
        let decoded = Message::from_json(built.raw()).unwrap();
        prop_assert_eq!(decoded.envelope(), &envelope);
        prop_assert_eq!(decoded.content(), &content);
        // Re-encoding the decoded message gives the same JSON value.
        let a: serde_json::Value = serde_json::from_str(&serde_json::to_string(&decoded).unwrap()).unwrap();
        let b: serde_json::Value = serde_json::from_str(built.raw()).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn merged_items_built_in_code_decode_back(content in text()) {
        let item = MergedItem {
            send_time: None,
            msgtype: None,
            sender_name: None,
            msg_content: Some(serde_json::json!({"msgtype":"text","text":{"content": content.clone()}}).to_string()),
        };
        let decoded = item.content().unwrap().unwrap();
        prop_assert_eq!(decoded, MessageContent::Text(Text { content, menu_id: None }));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let serde = serde_json::from_slice::<SyncMsgResponse>(&bytes);
        let fast = SyncMsgResponse::from_slice(&bytes);
        prop_assert_eq!(serde.is_ok(), fast.is_ok());
        if let (Ok(serde), Ok(fast)) = (serde, fast) {
            prop_assert_eq!(serde, fast);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = Message::from_json(text);
        }
    }

    #[test]
    fn arbitrary_json_values_in_msg_list_never_fail_the_page(values in proptest::collection::vec(arbitrary_json(), 0..8)) {
        let body = serde_json::json!({"errcode": 0, "next_cursor": "c", "has_more": 0, "msg_list": values});
        let page: SyncMsgResponse = serde_json::from_value(body.clone())
            .or_else(|_| serde_json::from_str(&body.to_string()))
            .unwrap();
        prop_assert_eq!(page.msg_list.len() + page.invalid.len(), values.len());
        // The three entry points agree on any page: the fast decoder, the serde path (which
        // reaches the fast decoder) and the general path alone.
        let text = body.to_string();
        let fast = SyncMsgResponse::from_slice(text.as_bytes()).unwrap();
        let serde: SyncMsgResponse = serde_json::from_slice(text.as_bytes()).unwrap();
        let general = SyncMsgResponse::from_slice_general(text.as_bytes()).unwrap();
        prop_assert_eq!(&fast, &serde);
        prop_assert_eq!(&fast, &general);
    }
}

/// Arbitrary JSON, biased towards things that look like msg_list items.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("text"),
            Just("event"),
            Just("location"),
            Just("msgmenu"),
            Just("zzz")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("msgid".to_string()),
                    Just("msgtype".to_string()),
                    Just("text".to_string()),
                    Just("event".to_string()),
                    Just("event_type".to_string()),
                    Just("send_time".to_string()),
                    Just("origin".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
