//! An agent that lists two managers on one bucket: the first killed mid-upload, the agent fails
//! over to the second and nothing it wrote is lost; the first restarted, the agent comes back to
//! it and uploads nothing again (the restarted manager has it all from the bucket).

use murmur_tests::*;

/// The agent's `murmur_agent_uplink_manager_rank`: which listed manager it is on (-1: none).
fn manager_rank(agent: &AgentProcess) -> Option<f64> {
    let text = agent.client.get("/metrics").ok()?.body;
    text.as_str()?
        .lines()
        .find(|l| l.starts_with("murmur_agent_uplink_manager_rank "))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn an_agent_fails_over_to_the_second_manager_and_comes_back_uploading_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("shared-bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    let args = ["--no-model", "--bucket", url.as_str()];
    let (first_uplink, second_uplink) = (free_udp_addr(), free_udp_addr());

    // The agent works offline first, then finds its managers.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[manager]\nfailback_interval_secs = 1\nmax_backoff_secs = 2\nconnect_timeout_secs = 3\n",
    )
    .unwrap();
    let managers = format!("{first_uplink},{second_uplink}");
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--manager",
            &managers,
            "--swarm-key",
            SWARM_KEY,
        ],
    );
    let ids = agent.add_all(&many(3000, "failover"), 250);
    let first_dir = dir.path().join("first");
    let first = ManagerProcess::start(&first_dir, &first_uplink, &args);
    wait_until(120, "the upload to the first manager to start", || {
        first.live() > 0
    });
    assert_eq!(
        manager_rank(&agent),
        Some(0.0),
        "the agent is not on its first manager"
    );
    let acknowledged = first.live();
    first.kill();
    assert!(
        acknowledged < ids.len() as u64,
        "the first manager was killed after the upload had finished: nothing was tested"
    );
    // Started only now: a second manager's start (it loads the bucket) takes longer than the
    // whole upload on a fast machine, so starting it earlier let the upload finish first.
    let second = ManagerProcess::start(&dir.path().join("second"), &second_uplink, &args);

    wait_until(120, "the agent to fail over to the second manager", || {
        manager_rank(&agent) == Some(1.0)
    });
    wait_until(120, "the second manager to hold every memory", || {
        second.live() == ids.len() as u64
    });
    for id in ids.iter().step_by(97) {
        assert_eq!(
            second.status_of(id),
            200,
            "{id} was written and is not on the second manager"
        );
    }

    // Back on its address, the first manager loads what the second wrote to the bucket; the
    // agent comes back to it and finds nothing to upload.
    let first = ManagerProcess::start(&first_dir, &first_uplink, &args);
    assert_eq!(
        first.live(),
        ids.len() as u64,
        "the restarted manager did not load the bucket"
    );
    wait_until(60, "the agent to come back to its first manager", || {
        manager_rank(&agent) == Some(0.0)
    });
    let in_sync = || {
        let overview = first.overview();
        let root = overview["manager"]["root_digest"].as_str().map(str::to_owned);
        root.is_some() && root == agent.stats()["sync"]["root_digest"].as_str().map(str::to_owned)
    };
    wait_until(60, "the agent and its first manager to agree", in_sync);
    assert_eq!(
        metric(&first, "murmur_manager_changes_persisted_total"),
        0.0,
        "the agent uploaded to the restarted manager what the bucket already held"
    );

    // New writes go to the first manager again, and reach the second through the bucket.
    let more = agent.add_all(&many(20, "after failback"), 20);
    wait_until(60, "the first manager to take the new writes", || {
        first.status_of(&more[19]) == 200
    });
    wait_until(60, "the second manager to read them from the bucket", || {
        second.status_of(&more[19]) == 200
    });
    agent.stop();
}
