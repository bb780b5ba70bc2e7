//! A small AMQP publisher and consumer for trying warren (used by `scripts/demo.sh`): it
//! publishes persistent messages with publisher confirms to one queue and consumes them on a
//! second connection, reconnecting like a real application when a connection is closed (a
//! drain deadline, a node going down). Once a second it prints what it has seen so far.
//!
//!   cargo run --release --example amqp_client -- --addr 127.0.0.1:5672 --duration 60s

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[derive(Parser)]
struct Args {
    /// warren's listener (or a node, to compare).
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    #[arg(long, default_value = "guest")]
    user: String,
    #[arg(long, default_value = "guest")]
    password: String,
    /// The queue (a quorum queue, declared if missing).
    #[arg(long, default_value = "warren-demo")]
    queue: String,
    /// Messages per second the publisher aims at.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Stop after this long (then wait up to 10 s for the consumer to catch up).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(Default)]
struct Counters {
    confirmed: HashSet<u64>,
    received: HashSet<u64>,
    reconnects: u64,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let ok = runtime.block_on(run(args));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(args: Args) -> bool {
    let uri = format!(
        "amqp://{}:{}@{}/%2f?heartbeat=10",
        args.user, args.password, args.addr
    );
    let counters = Arc::new(Mutex::new(Counters::default()));
    let until = Instant::now() + args.duration;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let publisher = tokio::spawn(publish(
        uri.clone(),
        args.queue.clone(),
        period,
        until,
        counters.clone(),
    ));
    let consumer = tokio::spawn(consume(uri, args.queue.clone(), counters.clone()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < until {
        tick.tick().await;
        report(&counters, started);
    }
    let _ = publisher.await;
    // Let the consumer catch up with what was confirmed.
    let catch_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < catch_up && missing(&counters) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.abort();
    report(&counters, started);
    let lost = missing(&counters);
    if lost == 0 {
        println!("every confirmed message was received");
    } else {
        println!("{lost} confirmed messages were not received");
    }
    lost == 0
}

fn missing(counters: &Mutex<Counters>) -> usize {
    let c = counters.lock().unwrap();
    c.confirmed.difference(&c.received).count()
}

fn report(counters: &Mutex<Counters>, started: Instant) {
    let c = counters.lock().unwrap();
    println!(
        "[{:>4.0}s] confirmed {:>6}  received {:>6}  reconnects {}",
        started.elapsed().as_secs_f64(),
        c.confirmed.len(),
        c.received.len(),
        c.reconnects
    );
}

async fn connect(uri: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

async fn declare(channel: &lapin::Channel, queue: &str) -> lapin::Result<()> {
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await
        .map(|_| ())
}

async fn publish(
    uri: String,
    queue: String,
    period: Duration,
    until: Instant,
    counters: Arc<Mutex<Counters>>,
) {
    let mut next_id = 0u64;
    while Instant::now() < until {
        let session = async {
            let connection = connect(&uri, "warren-demo-publisher").await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare(&channel, &queue).await?;
            while Instant::now() < until {
                let id = next_id;
                next_id += 1;
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        id.to_string().as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if confirm.is_ack() {
                    counters.lock().unwrap().confirmed.insert(id);
                }
                tokio::time::sleep(period).await;
            }
            let _ = connection.close(200, "done".into()).await;
            Ok::<(), lapin::Error>(())
        };
        if let Err(e) = session.await {
            eprintln!("publisher: {e}; reconnecting");
            counters.lock().unwrap().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn consume(uri: String, queue: String, counters: Arc<Mutex<Counters>>) {
    // Bounded like everything else here: the caller aborts it long before.
    for _ in 0..100_000 {
        let session = async {
            let connection = connect(&uri, "warren-demo-consumer").await?;
            let channel = connection.create_channel().await?;
            declare(&channel, &queue).await?;
            channel.basic_qos(100, BasicQosOptions::default()).await?;
            let mut deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                delivery.ack(BasicAckOptions::default()).await?;
                if let Some(id) = std::str::from_utf8(&delivery.data)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    counters.lock().unwrap().received.insert(id);
                }
            }
            Ok::<(), lapin::Error>(())
        };
        if let Err(e) = session.await {
            eprintln!("consumer: {e}; reconnecting");
        }
        counters.lock().unwrap().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
