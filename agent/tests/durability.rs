//! Nothing acknowledged is lost: SIGKILL the agent at random moments during a stream of
//! writes, restart it, and find every acknowledged memory, whole and searchable.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use murmur_tests::{AgentProcess, Lcg, env_or};
use serde_json::{Value, json};

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged() {
    let seed: u64 = env_or("MURMUR_TEST_SEED", 0x5eed);
    let cycles: usize = env_or("MURMUR_KILL_CYCLES", 12);
    let mut rng = Lcg(seed);
    let corpus = murmur_tests::corpus();
    let dir = tempfile::tempdir().unwrap();
    // id -> (text, metadata) of every memory whose write was acknowledged with 201.
    let acknowledged: Arc<Mutex<HashMap<String, (String, Value)>>> = Arc::default();
    let mut sequence = 0usize;

    for cycle in 0..cycles {
        let agent = AgentProcess::start(dir.path(), &[]);
        verify(&agent, &acknowledged.lock().unwrap(), cycle);

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let client = murmur_agent::client::Client::new(agent.client.base());
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let corpus = corpus.clone();
            let start = sequence;
            std::thread::spawn(move || {
                let mut n = start;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("{} (write {n})", corpus[n % corpus.len()]);
                    let metadata = json!({ "write": n, "cycle": cycle });
                    let body = if n.is_multiple_of(3) {
                        // Every third write is a batch of two; both or neither may exist.
                        json!({ "memories": [
                            { "text": text, "metadata": metadata },
                            { "text": format!("{text} (second)"), "metadata": metadata }
                        ]})
                    } else {
                        json!({ "text": text, "metadata": metadata })
                    };
                    let path = if n.is_multiple_of(3) {
                        "/v1/memories/batch"
                    } else {
                        "/v1/memories"
                    };
                    match client.post(path, &body) {
                        Ok(reply) if reply.status == 201 => {
                            let mut ack = acknowledged.lock().unwrap();
                            if n.is_multiple_of(3) {
                                let ids = reply.body["ids"].as_array().unwrap();
                                ack.insert(ids[0].as_str().unwrap().into(), (text.clone(), metadata.clone()));
                                ack.insert(
                                    ids[1].as_str().unwrap().into(),
                                    (format!("{text} (second)"), metadata.clone()),
                                );
                            } else {
                                ack.insert(reply.body["id"].as_str().unwrap().into(), (text, metadata));
                            }
                        }
                        // The agent died mid-request: not acknowledged, so not promised.
                        _ => break,
                    }
                    n += 1;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(200 + rng.next_u64() % 1500));
        agent.kill();
        stop.store(true, Ordering::Relaxed);
        sequence = writer.join().unwrap() + 1;
    }

    let agent = AgentProcess::start(dir.path(), &[]);
    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.len() >= cycles,
        "the test wrote too little to mean anything"
    );
    verify(&agent, &acknowledged, cycles);
    agent.stop();
}

fn verify(agent: &AgentProcess, acknowledged: &HashMap<String, (String, Value)>, cycle: usize) {
    for (id, (text, metadata)) in acknowledged {
        let reply = agent
            .client
            .get(&format!("/v1/memories/{id}?include_vector=true"))
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "cycle {cycle}: acknowledged {id} is missing: {:?}",
            reply.body
        );
        assert_eq!(&reply.body["text"], text.as_str(), "cycle {cycle}");
        assert_eq!(&reply.body["metadata"], metadata, "cycle {cycle}");
        let vector = &reply.body["vector"];
        assert_eq!(vector.as_array().map(Vec::len), Some(384), "cycle {cycle}");
        // Searchable: its own vector finds it (the index was rebuilt or reloaded).
        let hits = agent.search(json!({ "vector": vector, "k": 1 }));
        assert_eq!(
            hits[0]["id"],
            id.as_str(),
            "cycle {cycle}: {id} is not searchable"
        );
    }
    // No half-written memory: everything listed is whole.
    let mut cursor: Option<String> = None;
    let mut listed = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memories?limit=500&cursor={c}"),
            None => "/v1/memories?limit=500".into(),
        };
        let page = agent.client.get(&path).unwrap().ok().unwrap();
        for memory in page["memories"].as_array().unwrap() {
            assert!(
                memory["text"].as_str().is_some_and(|t| t.contains("(write ")),
                "{memory}"
            );
            assert!(memory["metadata"]["write"].is_u64(), "{memory}");
            listed += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert!(
        listed >= acknowledged.len(),
        "cycle {cycle}: listed {listed} < acknowledged {}",
        acknowledged.len()
    );
    assert_eq!(
        agent.stats()["index_size"],
        listed,
        "cycle {cycle}: index agrees with the store"
    );
}
