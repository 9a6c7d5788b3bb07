//! `seqforge serve` over real HTTP on 127.0.0.1: the binary is started with `--port 0` and the
//! tests read the bound address from its first stdout line, then talk HTTP/1.1 to it over plain
//! `TcpStream`s. Translations are compared with the same texts translated alone, in this
//! process, by a [`TranslatorPool`] on the same model: dynamic batching must not change a
//! single token or score. Limits, overload, timeouts, metrics, graceful shutdown on SIGTERM and
//! startup errors are checked with request counts and server state, never with sleeps.
#![cfg(feature = "serve")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use seqforge_runtime::pool::{PoolConfig, TranslatorPool, parse_options};
use serde_json::{Value, json};

/// Sources of different lengths (the fixture's model takes at most 63 bytes plus EOS).
const TEXTS: [&str; 12] = [
    "Hola.",
    "En el principio creó Dios los cielos y la tierra.",
    "¿Cuándo morirá?",
    "y",
    "La luz es buena.",
    "Mis enemigos dicen mal de mí.",
    "",
    "Y dijo Dios: Sea la luz; y fue la luz.",
    "árbol, río, niño",
    "Bienaventurados los pobres en espíritu.",
    "uno dos tres cuatro cinco seis siete",
    "fin",
];

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Result<Answer> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, rest) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(rest)? } else { rest.to_string() };
    Ok(Answer { status, headers, body })
}

/// The payload of a chunked body.
fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").context("bad chunk header")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(tail.get(..size).context("short chunk")?);
        rest = tail.get(size + 2..).context("short chunk")?;
    }
}

fn post(addr: &str, body: &Value) -> Result<Answer> {
    http(addr, "POST", "/v1/translate", Some(&body.to_string()))
}

/// A running `seqforge serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Result<Self> {
        let model = model.to_str().context("model path is not UTF-8")?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_seqforge"))
            .args(["serve", model, "--port", "0", "--threads", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("the server did not start ({status}): first stdout line {line:?}");
        };
        Ok(Self { addr: addr.to_string(), child })
    }

    /// The value of an unlabelled metric, or of the line starting with `series` (labels
    /// included).
    fn metric(&self, series: &str) -> Result<f64> {
        let answer = http(&self.addr, "GET", "/metrics", None)?;
        ensure!(answer.status == 200, "/metrics: {}", answer.status);
        let line = answer
            .body
            .lines()
            .find(|l| l.split(' ').next() == Some(series))
            .with_context(|| format!("no {series} in\n{}", answer.body))?;
        line.rsplit(' ').next().unwrap_or_default().parse().context("metric value")
    }
}

impl Server {
    /// Polls `/metrics` until `n` requests are queued (a state, not a time: at most 30 s).
    fn wait_for_queued_requests(&self, n: usize) -> Result<()> {
        for _ in 0..6000 {
            if self.metric("seqforge_queue_requests")? >= n as f64 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("{n} requests never reached the queue")
    }

    /// Sends SIGTERM.
    fn terminate(&self) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Translates each text alone in this process and returns the JSON a server must answer.
fn alone(model: &Path, texts: &[&str], options: Option<&Value>) -> Result<Vec<Value>> {
    alone_padded(model, texts, options, 1)
}

/// [`alone`] with sources padded to a multiple of `pad` (`--pad-source-to-multiple`).
fn alone_padded(
    model: &Path,
    texts: &[&str],
    options: Option<&Value>,
    pad: usize,
) -> Result<Vec<Value>> {
    let mut config = PoolConfig::new(model);
    config.runtime.pad_source_to_multiple = pad;
    let pool = TranslatorPool::open(config)?;
    let options = match options {
        Some(o) => parse_options(&o.to_string(), pool.default_options())?,
        None => pool.default_options().clone(),
    };
    texts
        .iter()
        .map(|text| {
            let mut one = pool.translate(&[text], &options)?;
            let t = one.pop().context("no translation")?;
            // Through text, as the server sends it (f32 → shortest decimal).
            Ok(serde_json::from_str(&serde_json::to_string(&t)?)?)
        })
        .collect()
}

/// Runs `requests` at once from as many threads (released together), returning the answers
/// in request order.
fn concurrently(addr: &str, requests: Vec<Value>) -> Result<Vec<Answer>> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let handles: Vec<_> = requests
        .into_iter()
        .map(|body| {
            let barrier = Arc::clone(&barrier);
            let addr = addr.to_string();
            std::thread::spawn(move || {
                barrier.wait();
                post(&addr, &body)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?)
        .collect()
}

/// Checks that `answer` is a 200 with exactly `expected`'s translations.
fn check_translations(answer: &Answer, expected: &[&Value], what: &str) -> Result<()> {
    ensure!(answer.status == 200, "{what}: status {}: {}", answer.status, answer.body);
    let body = answer.json()?;
    let got = body["translations"].as_array().with_context(|| format!("{what}: {body}"))?;
    ensure!(got.len() == expected.len(), "{what}: {} translations", got.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        ensure!(g == *e, "{what}: translation {i} differs from translating alone:\n{g}\n{e}");
    }
    Ok(())
}

#[test]
fn sixty_four_concurrent_clients_get_what_translating_alone_gives() -> Result<()> {
    let f = common::fixture()?;
    let option_sets = [
        None,
        Some(json!({"beam": 3, "nbest": 2, "max_len_b": 12})),
        Some(json!({"strategy": {"kind": "greedy"}, "beam": 1, "max_len_b": 16})),
    ];
    let expected: Vec<Vec<Value>> =
        option_sets.iter().map(|o| alone(&f.model, &TEXTS, o.as_ref())).collect::<Result<_>>()?;
    let server = Server::start(
        &f.model,
        &["--workers", "2", "--max-wait-ms", "20", "--max-batch-tokens", "200"],
    )?;
    // Client i sends one to three texts with option set i % 3.
    let plan: Vec<(usize, Vec<usize>)> = (0..64)
        .map(|i| (i % 3, (0..1 + i % 3).map(|k| (i * 5 + k * 7) % TEXTS.len()).collect()))
        .collect();
    let requests = plan
        .iter()
        .map(|(o, texts)| {
            let texts: Vec<&str> = texts.iter().map(|&t| TEXTS[t]).collect();
            match &option_sets[*o] {
                Some(options) => json!({"texts": texts, "options": options}),
                None => json!({"texts": texts}),
            }
        })
        .collect();
    let answers = concurrently(&server.addr, requests)?;
    let mut sentences = 0;
    for (i, ((o, texts), answer)) in plan.iter().zip(&answers).enumerate() {
        let want: Vec<&Value> = texts.iter().map(|&t| &expected[*o][t]).collect();
        check_translations(answer, &want, &format!("client {i}"))?;
        sentences += texts.len();
    }
    // The metrics agree with what was sent.
    ensure!(
        server.metric("seqforge_http_requests_total{route=\"/v1/translate\",code=\"200\"}")?
            == 64.0
    );
    ensure!(server.metric("seqforge_request_duration_seconds_count")? == 64.0);
    ensure!(server.metric("seqforge_translated_sentences_total")? == sentences as f64);
    ensure!(server.metric("seqforge_batch_sentences_sum")? == sentences as f64);
    let batches = server.metric("seqforge_batch_sentences_count")?;
    ensure!(batches >= 1.0 && batches <= sentences as f64, "{batches} batches");
    ensure!(server.metric("seqforge_generated_tokens_total")? > 0.0);
    ensure!(server.metric("seqforge_queue_texts")? == 0.0);
    ensure!(server.metric("seqforge_running_batches")? == 0.0);
    Ok(())
}

/// Starts a server whose batches are due exactly when `texts` are all queued (their source
/// tokens add up to `--max-batch-tokens`, and the wait bound is ten minutes away), sends each
/// text as its own request at once, and returns the server and the answers.
fn one_batch(
    model: &Path,
    texts: &[&str],
    options: &Value,
    extra: &[&str],
) -> Result<(Server, Vec<Answer>)> {
    let pool = TranslatorPool::open(PoolConfig::new(model))?;
    let total: usize =
        texts.iter().map(|t| pool.source_tokens(t)).collect::<Result<Vec<_>, _>>()?.iter().sum();
    let total = total.to_string();
    let mut args = vec!["--workers", "1", "--max-wait-ms", "600000", "--max-batch-tokens", &total];
    args.extend_from_slice(extra);
    let server = Server::start(model, &args)?;
    let requests = texts.iter().map(|t| json!({"texts": [t], "options": options})).collect();
    let answers = concurrently(&server.addr, requests)?;
    Ok((server, answers))
}

#[test]
fn queued_requests_of_one_length_share_a_model_batch_and_keep_their_results() -> Result<()> {
    let f = common::fixture()?;
    let options = json!({"beam": 2, "max_len_b": 10});
    // 24 different sources of 5 bytes each (6 tokens with EOS).
    let texts: Vec<String> =
        (0..24).map(|i| format!("{}{i:02}.", ["ab", "xy", "Lu"][i % 3])).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = alone(&f.model, &texts, Some(&options))?;
    let (server, answers) = one_batch(&f.model, &texts, &options, &[])?;
    for (i, answer) in answers.iter().enumerate() {
        check_translations(answer, &[&expected[i]], &format!("client {i}"))?;
    }
    ensure!(server.metric("seqforge_batch_sentences_count")? == 1.0, "one model batch");
    ensure!(server.metric("seqforge_batch_sentences_sum")? == 24.0);
    ensure!(server.metric("seqforge_batch_sentences_bucket{le=\"16\"}")? == 0.0);
    ensure!(server.metric("seqforge_batch_sentences_bucket{le=\"32\"}")? == 1.0);
    Ok(())
}

#[test]
fn sources_padded_to_a_multiple_share_batches_across_lengths_bit_for_bit() -> Result<()> {
    let f = common::fixture()?;
    let options = json!({"beam": 2, "max_len_b": 10});
    // 9 to 16 tokens with EOS: different lengths, one bucket of 16 with a multiple of 8.
    let texts = ["abcdefgh", "ab cd ef gh i", "hola mundo", "adios!!!!!!!!!!", "Lu 12345678"];
    let expected = alone_padded(&f.model, &texts, Some(&options), 8)?;
    let total = (16 * texts.len()).to_string();
    let args = ["--workers", "1", "--max-wait-ms", "600000", "--max-batch-tokens", &total];
    let server =
        Server::start(&f.model, &[&args[..], &["--pad-source-to-multiple", "8"]].concat())?;
    let requests = texts.iter().map(|t| json!({"texts": [t], "options": options})).collect();
    let answers = concurrently(&server.addr, requests)?;
    for (i, answer) in answers.iter().enumerate() {
        check_translations(answer, &[&expected[i]], &format!("client {i}"))?;
    }
    ensure!(server.metric("seqforge_batch_sentences_count")? == 1.0, "one model batch");
    ensure!(server.metric("seqforge_batch_sentences_sum")? == texts.len() as f64);
    Ok(())
}

#[test]
fn mixed_length_batches_pad_sources_and_keep_the_tokens() -> Result<()> {
    let f = common::fixture()?;
    let options = json!({"beam": 2, "max_len_b": 10});
    let texts: Vec<&str> = TEXTS.iter().copied().filter(|t| !t.is_empty()).collect();
    let expected = alone(&f.model, &texts, Some(&options))?;
    let (server, answers) = one_batch(&f.model, &texts, &options, &["--mixed-length-batches"])?;
    ensure!(server.metric("seqforge_batch_sentences_count")? == 1.0, "one model batch");
    ensure!(server.metric("seqforge_batch_sentences_sum")? == texts.len() as f64);
    // Padding may move scores in their last bits; the hypotheses stay the same.
    for (i, answer) in answers.iter().enumerate() {
        ensure!(answer.status == 200, "client {i}: {}", answer.body);
        let got = &answer.json()?["translations"][0]["hypotheses"][0];
        let want = &expected[i]["hypotheses"][0];
        ensure!(got["tokens"] == want["tokens"] && got["text"] == want["text"], "client {i}");
        let (g, w) = (got["score"].as_f64(), want["score"].as_f64());
        ensure!(g.zip(w).is_some_and(|(g, w)| (g - w).abs() < 1e-4), "client {i}: {g:?} {w:?}");
    }
    Ok(())
}

#[test]
fn overload_is_refused_with_retry_after_and_the_server_recovers() -> Result<()> {
    let f = common::fixture()?;
    // The batcher holds the first request for 2 s, so the 4-text queue fills up at once.
    let server = Server::start(
        &f.model,
        &[
            "--workers",
            "1",
            "--max-queue",
            "4",
            "--max-texts-per-request",
            "2",
            "--max-wait-ms",
            "2000",
            "--max-batch-tokens",
            "100000",
            "--retry-after-s",
            "3",
        ],
    )?;
    let options = json!({"beam": 2, "max_len_b": 8});
    let requests =
        (0..24).map(|i| json!({"texts": [TEXTS[i % TEXTS.len()]], "options": options})).collect();
    let answers = concurrently(&server.addr, requests)?;
    let (mut ok, mut refused) = (0, 0);
    for answer in &answers {
        match answer.status {
            200 => ok += 1,
            503 => {
                refused += 1;
                ensure!(
                    answer.header("retry-after") == Some("3"),
                    "Retry-After: {:?}",
                    answer.headers
                );
                let body = answer.json()?;
                ensure!(body["error"]["code"] == "overloaded", "{body}");
            }
            other => bail!("unexpected status {other}: {}", answer.body),
        }
    }
    ensure!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    let health = http(&server.addr, "GET", "/healthz", None)?;
    ensure!(health.status == 200 && health.json()?["status"] == "ok", "{}", health.body);
    let expected = alone(&f.model, &["Hola."], Some(&options))?;
    let answer = post(&server.addr, &json!({"texts": ["Hola."], "options": options}))?;
    check_translations(&answer, &[&expected[0]], "after the overload")?;
    ensure!(
        server.metric("seqforge_http_requests_total{route=\"/v1/translate\",code=\"503\"}")?
            == f64::from(refused)
    );
    Ok(())
}

#[test]
fn requests_beyond_the_concurrency_limit_are_refused_before_their_body_is_read() -> Result<()> {
    let f = common::fixture()?;
    let server = Server::start(
        &f.model,
        &[
            "--max-concurrent-requests",
            "2",
            "--max-wait-ms",
            "600000",
            "--max-batch-tokens",
            "100000",
            "--retry-after-s",
            "2",
        ],
    )?;
    // Two requests wait in the queue (the batch would wait 10 minutes to fill): both slots
    // are taken.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || post(&addr, &json!({"texts": ["Hola."]})))
        })
        .collect();
    server.wait_for_queued_requests(2)?;
    let refused = post(&server.addr, &json!({"texts": ["fin"]}))?;
    ensure!(refused.status == 503, "{} {}", refused.status, refused.body);
    ensure!(refused.header("retry-after") == Some("2"), "{:?}", refused.headers);
    let error = refused.json()?["error"].clone();
    ensure!(error["code"] == "overloaded", "{error}");
    ensure!(error["message"].as_str().is_some_and(|m| m.contains("--max-concurrent-requests")));
    ensure!(http(&server.addr, "GET", "/healthz", None)?.status == 200, "health is not limited");
    // Shutting down flushes the queue: the held requests are answered.
    server.terminate()?;
    for h in held {
        let answer = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        ensure!(answer.status == 200, "{} {}", answer.status, answer.body);
    }
    Ok(())
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() -> Result<()> {
    let f = common::fixture()?;
    let server = Server::start(
        &f.model,
        &["--max-texts-per-request", "3", "--max-chars-per-text", "40", "--max-queue", "8"],
    )?;
    let addr = server.addr.as_str();
    let raw = |body: &str| http(addr, "POST", "/v1/translate", Some(body));
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        ("malformed JSON", raw("{\"texts\": [\"a\"")?, 400, "invalid_json"),
        ("not an object", raw("[\"a\"]")?, 400, "invalid_json"),
        ("texts not a list", raw("{\"texts\": \"a\"}")?, 400, "invalid_json"),
        ("a text not a string", raw("{\"texts\": [1]}")?, 400, "invalid_json"),
        ("no texts", raw("{}")?, 400, "invalid_json"),
        ("unknown field", raw("{\"texts\": [], \"beam\": 2}")?, 400, "invalid_json"),
        (
            "unknown option",
            post(addr, &json!({"texts": ["a"], "options": {"beamz": 2}}))?,
            400,
            "invalid_options",
        ),
        (
            "option of the wrong type",
            post(addr, &json!({"texts": ["a"], "options": {"beam": "wide"}}))?,
            400,
            "invalid_options",
        ),
        (
            "nbest above beam",
            post(addr, &json!({"texts": ["a"], "options": {"beam": 2, "nbest": 3}}))?,
            400,
            "invalid_options",
        ),
        (
            "too many texts",
            post(addr, &json!({"texts": ["a", "b", "c", "d"]}))?,
            413,
            "too_many_texts",
        ),
        (
            "too long a text",
            post(addr, &json!({"texts": ["a", "x".repeat(41)]}))?,
            413,
            "text_too_long",
        ),
        (
            "more source tokens than the model takes",
            post(addr, &json!({"texts": ["a", "b", "ñ".repeat(40)]}))?,
            400,
            "invalid_text",
        ),
    ];
    for (what, answer, status, code) in &cases {
        ensure!(answer.status == *status, "{what}: {} {}", answer.status, answer.body);
        ensure!(
            answer.header("content-type") == Some("application/json"),
            "{what}: {:?}",
            answer.headers
        );
        let body = answer.json()?;
        ensure!(body["error"]["code"] == *code, "{what}: {body}");
        ensure!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    }
    let message = |i: usize| cases[i].1.json().map(|b| b["error"].clone());
    ensure!(message(6)?["message"].as_str().is_some_and(|m| m.contains("beamz")));
    ensure!(message(10)?["index"] == 1, "{}", message(10)?);
    ensure!(message(11)?["index"] == 2, "{}", message(11)?);
    // An empty list is a valid request with an empty answer; other methods and paths are not.
    let empty = post(addr, &json!({"texts": []}))?;
    ensure!(empty.status == 200 && empty.json()?["translations"] == json!([]), "{}", empty.body);
    ensure!(http(addr, "GET", "/v1/translate", None)?.status == 405);
    ensure!(http(addr, "GET", "/nowhere", None)?.status == 404);
    let count = |code: &str| {
        server.metric(&format!(
            "seqforge_http_requests_total{{route=\"/v1/translate\",code=\"{code}\"}}"
        ))
    };
    ensure!(count("400")? == 10.0);
    ensure!(count("413")? == 2.0);
    ensure!(count("200")? == 1.0);
    ensure!(count("405")? == 1.0);
    ensure!(server.metric("seqforge_http_requests_total{route=\"other\",code=\"404\"}")? == 1.0);
    ensure!(server.metric("seqforge_translated_sentences_total")? == 0.0);
    Ok(())
}

#[test]
fn a_request_past_its_timeout_gets_504() -> Result<()> {
    let f = common::fixture()?;
    // The batcher would wait 10 minutes for the batch to fill: the request times out first.
    let server = Server::start(
        &f.model,
        &["--request-timeout-ms", "300", "--max-wait-ms", "600000", "--max-batch-tokens", "100000"],
    )?;
    let answer = post(&server.addr, &json!({"texts": ["Hola."]}))?;
    ensure!(answer.status == 504, "{} {}", answer.status, answer.body);
    ensure!(answer.json()?["error"]["code"] == "timeout");
    ensure!(
        server.metric("seqforge_http_requests_total{route=\"/v1/translate\",code=\"504\"}")? == 1.0
    );
    Ok(())
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() -> Result<()> {
    let f = common::fixture()?;
    let options = json!({"beam": 2, "max_len_b": 10});
    let expected = alone(&f.model, &["Hola.", "fin"], Some(&options))?;
    // The request stays queued (the batch waits 10 minutes to fill) until shutdown flushes it.
    let mut server =
        Server::start(&f.model, &["--max-wait-ms", "600000", "--max-batch-tokens", "100000"])?;
    let addr = server.addr.clone();
    let client = std::thread::spawn(move || {
        post(&addr, &json!({"texts": ["Hola.", "fin"], "options": options}))
    });
    server.wait_for_queued_requests(1)?;
    server.terminate()?;
    let answer = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    check_translations(&answer, &[&expected[0], &expected[1]], "in-flight request")?;
    let exit = server.child.wait()?;
    ensure!(exit.success(), "exit status {exit}");
    Ok(())
}

#[test]
fn bad_startup_input_exits_non_zero_with_a_message() -> Result<()> {
    let f = common::fixture()?;
    let run = |args: &[&str]| -> Result<(bool, String, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_seqforge"))
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let missing = f.root.join("no-such-model");
    let missing = missing.to_str().context("path")?;
    let (ok, stdout, stderr) = run(&[missing, "--port", "0"])?;
    ensure!(!ok && stdout.is_empty(), "{stdout}");
    ensure!(
        stderr.contains("no-such-model") && stderr.contains("no such model directory"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port().to_string();
    let model = f.model.to_str().context("path")?;
    let (ok, stdout, stderr) = run(&[model, "--port", &port])?;
    ensure!(!ok && stdout.is_empty(), "{stdout}");
    ensure!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");

    let (ok, _, stderr) = run(&[model, "--port", "0", "--max-queue", "0"])?;
    ensure!(!ok && stderr.contains("--max-queue"), "{stderr}");
    let (ok, _, stderr) =
        run(&[model, "--port", "0", "--max-queue", "4", "--max-texts-per-request", "8"])?;
    ensure!(!ok && stderr.contains("--max-texts-per-request"), "{stderr}");
    Ok(())
}

/// `--idle-timeout-ms`: a connection that sends nothing, one that dribbles its headers and a
/// kept-alive one after its request are all closed by the server (the open-connection gauge
/// falls back), while a request in progress is not cut; a body announced beyond the limit is
/// refused with 413 before any of it is read.
#[test]
fn idle_connections_are_closed_and_oversized_bodies_refused_at_once() -> Result<()> {
    let f = common::fixture()?;
    let server = Server::start(&f.model, &["--idle-timeout-ms", "400"])?;
    let addr = server.addr.as_str();
    let closed_by_server = |mut s: TcpStream| -> Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut rest = Vec::new();
        // EOF (or a reset): closed. A read timeout would be an error here.
        match s.read_to_end(&mut rest) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e.into()),
        }
    };
    let silent = TcpStream::connect(addr)?;
    let mut dribbling = TcpStream::connect(addr)?;
    dribbling.write_all(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\n")?;
    let mut kept = TcpStream::connect(addr)?;
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    kept.read_exact(&mut head)?;
    ensure!(&head == b"HTTP/1.1 200", "{:?}", String::from_utf8_lossy(&head));
    ensure!(server.metric("seqforge_open_connections")? >= 4.0, "the gauge misses connections");
    for (what, s) in [("silent", silent), ("dribbling", dribbling), ("kept-alive", kept)] {
        closed_by_server(s).with_context(|| format!("the {what} connection"))?;
    }
    // Only the connection asking is open now.
    ensure!(server.metric("seqforge_open_connections")? == 1.0);
    // A full request still gets its answer.
    let answer = post(addr, &json!({"texts": ["Hola."]}))?;
    ensure!(answer.status == 200, "{} {}", answer.status, answer.body);
    // 1 GB announced, 10 bytes sent: 413 at once, naming the size.
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{{\"texts\""
    )?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    ensure!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    ensure!(answer.contains("1000000000 bytes"), "{answer}");
    Ok(())
}
