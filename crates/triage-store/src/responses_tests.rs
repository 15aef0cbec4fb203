//! Tests of the stored responses (`previous_response_id`), against SQLite and (with
//! `TRIAGE_TEST_POSTGRES_URL`) PostgreSQL.

use crate::tests::{stores, unique};
use crate::*;

/// The tests of this table run one at a time: sweeping is table-wide, and PostgreSQL's
/// database is shared by every test.
static TABLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn row(id: &str, previous: Option<&str>, key: Option<&str>, created_ms: i64, items: &str) -> StoredResponse {
    StoredResponse {
        id: id.to_owned(),
        previous_id: previous.map(str::to_owned),
        key_id: key.map(str::to_owned),
        created_ms,
        items: items.to_owned(),
    }
}

#[tokio::test]
async fn a_conversation_is_its_chain_of_responses_oldest_first() {
    let _one_at_a_time = TABLE.lock().await;
    for store in stores().await {
        let (a, b, c) = (unique("resp_a"), unique("resp_b"), unique("resp_c"));
        store.put_response(&row(&a, None, None, 1_000, r#"[{"n":1}]"#)).await.unwrap();
        store.put_response(&row(&b, Some(&a), None, 2_000, r#"[{"n":2},{"n":3}]"#)).await.unwrap();
        store.put_response(&row(&c, Some(&b), None, 3_000, r#"[{"n":4}]"#)).await.unwrap();
        // A second branch from the same response.
        let d = unique("resp_d");
        store.put_response(&row(&d, Some(&a), None, 3_500, r#"[{"n":5}]"#)).await.unwrap();
        assert_eq!(
            store.conversation(&c, None).await.unwrap(),
            Conversation::Found(vec![r#"[{"n":1}]"#.into(), r#"[{"n":2},{"n":3}]"#.into(), r#"[{"n":4}]"#.into()])
        );
        assert_eq!(
            store.conversation(&d, None).await.unwrap(),
            Conversation::Found(vec![r#"[{"n":1}]"#.into(), r#"[{"n":5}]"#.into()])
        );
        assert_eq!(store.conversation(&a, None).await.unwrap(), Conversation::Found(vec![r#"[{"n":1}]"#.into()]));
        assert_eq!(store.conversation(&unique("resp_x"), None).await.unwrap(), Conversation::Unknown);
        // Stored twice: the first is kept.
        store.put_response(&row(&a, None, None, 9_000, "[]")).await.unwrap();
        assert_eq!(store.conversation(&a, None).await.unwrap(), Conversation::Found(vec![r#"[{"n":1}]"#.into()]));
    }
}

#[tokio::test]
async fn only_the_key_that_made_a_conversation_may_continue_it() {
    let _one_at_a_time = TABLE.lock().await;
    for store in stores().await {
        let (a, b) = (unique("resp_a"), unique("resp_b"));
        store.put_response(&row(&a, None, Some("key_1"), 1_000, "[1]")).await.unwrap();
        store.put_response(&row(&b, Some(&a), Some("key_1"), 2_000, "[2]")).await.unwrap();
        assert_eq!(
            store.conversation(&b, Some("key_1")).await.unwrap(),
            Conversation::Found(vec!["[1]".into(), "[2]".into()])
        );
        assert_eq!(store.conversation(&b, Some("key_2")).await.unwrap(), Conversation::Unknown);
        assert_eq!(store.conversation(&b, None).await.unwrap(), Conversation::Unknown);
    }
}

#[tokio::test]
async fn sweeping_bounds_age_and_rows_and_a_broken_chain_is_incomplete() {
    let _one_at_a_time = TABLE.lock().await;
    for store in stores().await {
        let base = 4_000_000_000_000_i64;
        let ids: Vec<String> = (0..6).map(|i| unique(&format!("resp_{i}"))).collect();
        for (i, id) in ids.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| ids[p].as_str());
            store.put_response(&row(id, prev, None, base + i as i64, &format!("[{i}]"))).await.unwrap();
        }
        // Older than base + 2: rows 0 and 1 go.
        let gone = store.sweep_responses(base + 2, u64::MAX / 2).await.unwrap();
        assert!(gone >= 2, "{gone}");
        assert_eq!(store.stored_responses().await.unwrap(), 4);
        assert_eq!(store.conversation(&ids[0], None).await.unwrap(), Conversation::Unknown);
        assert_eq!(store.conversation(&ids[5], None).await.unwrap(), Conversation::Incomplete(ids[1].clone()));
        assert_eq!(store.conversation(&ids[2], None).await.unwrap(), Conversation::Incomplete(ids[1].clone()));
        // At most 2 rows: the newest two stay (rows 4 and 5).
        store.sweep_responses(0, 2).await.unwrap();
        assert_eq!(store.stored_responses().await.unwrap(), 2);
        assert_eq!(store.conversation(&ids[3], None).await.unwrap(), Conversation::Unknown);
        assert_eq!(store.conversation(&ids[5], None).await.unwrap(), Conversation::Incomplete(ids[3].clone()));
        store.sweep_responses(i64::MAX, 0).await.unwrap();
        assert_eq!(store.stored_responses().await.unwrap(), 0);
    }
}
