//! The servers start, answer, stop and start again.

#[test]
fn redis_and_postgres_start_stop_and_resume() {
    let mut redis = testkit::Redis::start();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    redis.kill();
    redis.resume();
    assert_eq!(redis.cli(&["PING"]), "PONG");

    let mut postgres = testkit::Postgres::start();
    postgres.create_database("smoke");
    assert_eq!(postgres.psql("smoke", "SELECT 40 + 2"), "42");
    postgres.kill();
    postgres.resume();
    assert_eq!(postgres.psql("smoke", "SELECT 1"), "1");
}
