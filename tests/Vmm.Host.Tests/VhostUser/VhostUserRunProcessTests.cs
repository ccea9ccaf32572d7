using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using NUnit.Framework;
using Vmm.Host.Tests.Run;

namespace Vmm.Host.Tests.VhostUser;

/// <summary>
/// Dogfood through the command line: <c>./vmm serve</c> as the back-end, <c>./vmm run --vhost-user</c>
/// as the front-end, both real processes (docs/cli.md). No timing is asserted.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class VhostUserRunProcessTests
{
    private WorkDir _dir = null!;

    [SetUp]
    public void CreateDir() => _dir = new WorkDir();

    [TearDown]
    public void RemoveDir() => _dir.Dispose();

    [Test]
    public void Checksum_through_vmm_serve_equals_the_sha256_of_the_image()
    {
        using var image = new TempImage((5 << 20) + (3 * 512), seed: 21);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk", "--workload", "checksum");
        string expected = Convert.ToHexStringLower(SHA256.HashData(image.Read()));
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr + serve.Log);
            Assert.That(r.Stdout, Is.EqualTo($"sha256 {expected}\n"));
            Assert.That(serve.HasExited, Is.False, "the back-end exited after its front-end disconnected");
        });
    }

    [Test]
    public void Wait_on_starts_before_its_backend_and_serves_once_the_backend_listens()
    {
        using var image = new TempImage(1 << 20, seed: 22);
        string socket = _dir["late.sock"];
        Task<VmmProcess.Result> run = Task.Run(() => VmmProcess.Run("run", "--vhost-user", $"{socket},type=blk,wait=on", "--workload", "checksum"));

        // The front-end is up and waiting (no socket yet) before the back-end starts.
        Thread.Sleep(TimeSpan.FromSeconds(2));
        Assert.That(run.IsCompleted, Is.False, "vmm run did not wait for its back-end: " + (run.IsCompleted ? run.Result.Stderr : string.Empty));
        using ServeProcess serve = ServeProcess.Blk(image.Path, socket);
        VmmProcess.Result r = run.GetAwaiter().GetResult();

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + serve.Log);
        Assert.That(r.Stdout, Is.EqualTo($"sha256 {Convert.ToHexStringLower(SHA256.HashData(image.Read()))}\n"));
    }

    [TestCase]
    [TestCase("--packed")]
    [TestCase("--interrupts", "function")]
    [TestCase("--packed", "--interrupts", "function", "--no-event-idx", "--no-indirect")]
    public void Verify_through_vmm_serve_leaves_the_pattern_on_the_image(params string[] extra)
    {
        const int length = 2 << 20;
        using var image = new TempImage(length, seed: 22);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        VmmProcess.Result r = VmmProcess.Run(["run", "--vhost-user", $"{serve.Socket},type=blk", "--workload", "verify", "--block-size", "64k", "--iodepth", "8", .. extra]);
        Assert.That(r.ExitCode, Is.Zero, r.Stderr + serve.Log);
        Assert.That(r.Stdout, Does.StartWith("verify:").And.Contain("equal"));
        AssertHoldsPattern(image.Read(), length);
    }

    [Test]
    public void Two_queues_with_a_two_queue_back_end()
    {
        const int length = 1 << 20;
        using var image = new TempImage(length, seed: 23);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"], queues: 2);
        VmmProcess.Result probe = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk,queues=2", "--workload", "probe");
        VmmProcess.Result verify = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk,queues=2", "--workload", "verify");
        VmmProcess.Result bench = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk,queues=2", "--workload", "bench", "--seconds", "1", "--json");
        Assert.Multiple(() =>
        {
            Assert.That(probe.ExitCode, Is.Zero, probe.Stderr + serve.Log);
            Assert.That(probe.Stdout, Does.Contain("queues              2 (q0:").And.Contain("num_queues          2"));
            Assert.That(verify.ExitCode, Is.Zero, verify.Stderr);
            Assert.That(bench.ExitCode, Is.Zero, bench.Stderr);
            Assert.That(bench.Stdout, Does.Contain("\"queues\":2").And.Contain("\"errors\":0"));
        });
        AssertHoldsPattern(image.Read(), length);
    }

    [Test]
    public void More_queues_than_the_back_end_has_is_a_usage_error()
    {
        using var image = new TempImage(1 << 20, seed: 24);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk,queues=2");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain("queues=2").And.Contain("1 queue"));
        });
    }

    [Test]
    public void Rng_verify_through_vmm_serve_rng()
    {
        using ServeProcess serve = ServeProcess.Rng(_dir["rng.sock"]);
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=rng", "--workload", "verify");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr + serve.Log);
            Assert.That(r.Stdout, Does.StartWith("verify:"));
        });
    }

    [Test]
    public void Bench_through_vmm_serve_reports_json()
    {
        using var image = new TempImage(4 << 20, seed: 25);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=blk", "--workload", "bench", "--seconds", "1", "--rw", "randwrite", "--json");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr + serve.Log);
            Assert.That(r.Stdout, Does.Contain("\"errors\":0").And.Contain("\"rw\":\"randwrite\"").And.Contain("\"interrupts\":\"event\""));
        });
    }

    [Test]
    public void Probe_prints_the_back_ends_features_and_config_for_blk_and_rng_together()
    {
        using var image = new TempImage(4 << 20, seed: 26);
        using ServeProcess blk = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        using ServeProcess rng = ServeProcess.Rng(_dir["rng.sock"]);
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{blk.Socket},type=blk", "--vhost-user", $"{rng.Socket},type=rng", "--workload", "probe");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Does.Contain("device blk: virtio device id 2 (Block)"));
            Assert.That(r.Stdout, Does.Contain("device rng: virtio device id 4 (Entropy)"));
            Assert.That(r.Stdout, Does.Contain($"vhost-user socket   {blk.Socket}"));
            Assert.That(r.Stdout, Does.Match(@"back-end features   0x[0-9a-f]{16} .*VERSION_1"));
            Assert.That(r.Stdout, Does.Contain("protocol features   0x"));
            Assert.That(r.Stdout, Does.Contain($"capacity            {(4 << 20) / 512} sectors"));
            Assert.That(r.Stdout, Does.Contain("status              0x0f"));
        });
    }

    [Test]
    public void Probe_works_for_a_type_without_a_guest_workload()
    {
        // A blk back-end announced as device-id=2 is the same device; verify needs a known kind.
        using var image = new TempImage(1 << 20, seed: 27);
        using ServeProcess serve = ServeProcess.Blk(image.Path, _dir["blk.sock"]);
        VmmProcess.Result probe = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},device-id=2", "--workload", "probe");
        VmmProcess.Result verify = VmmProcess.Run("run", "--vhost-user", $"{serve.Socket},type=net", "--workload", "verify");
        Assert.Multiple(() =>
        {
            Assert.That(probe.ExitCode, Is.Zero, probe.Stderr);
            Assert.That(probe.Stdout, Does.Contain("virtio device id 2"));
            Assert.That(verify.ExitCode, Is.EqualTo(2));
            Assert.That(verify.StderrLines, Has.Length.EqualTo(1));
            Assert.That(verify.Stderr, Does.Contain("verify").And.Contain("net"));
        });
    }

    [Test]
    public void A_missing_socket_is_a_usage_error_in_one_sentence()
    {
        string missing = _dir["nothing.sock"];
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{missing},type=blk");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain(missing).And.Contain("does not exist").And.Not.Contain("   at "));
            Assert.That(r.Stdout, Is.Empty);
        });
    }

    [Test]
    public void A_file_that_is_not_a_socket_is_a_usage_error_in_one_sentence()
    {
        string file = _dir["plain.file"];
        File.WriteAllText(file, "not a socket");
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{file},type=blk");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain(file).And.Contain("refused").And.Not.Contain("   at "));
        });
    }

    [Test]
    public void A_socket_nobody_listens_on_is_refused_in_one_sentence()
    {
        // Bound but not listening: connect(2) gets ECONNREFUSED, as with a back-end that has died.
        string path = _dir["stale.sock"];
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{path},type=blk");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain("refused"));
        });
    }

    [Test]
    public void A_back_end_that_hangs_up_during_the_handshake_is_a_usage_error_in_one_sentence()
    {
        string path = _dir["hangup.sock"];
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen();
        Task accept = Task.Run(() =>
        {
            // Take the first request, then hang up.
            using Socket peer = listener.Accept();
            byte[] header = new byte[12];
            _ = peer.Receive(header);
            peer.Shutdown(SocketShutdown.Both);
        });
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{path},type=blk");
        accept.Wait(TimeSpan.FromSeconds(30));
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain("hung up during the handshake"));
        });
    }

    [Test]
    public void A_back_end_without_version_1_is_a_usage_error_in_one_sentence()
    {
        string path = _dir["legacy.sock"];
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen();
        Task accept = Task.Run(() =>
        {
            // Answer GET_FEATURES (1) with PROTOCOL_FEATURES only: flags 0x5 = version 1 | reply.
            using Socket peer = listener.Accept();
            byte[] header = new byte[12];
            _ = peer.Receive(header);
            byte[] reply = new byte[20];
            BinaryPrimitives.WriteUInt32LittleEndian(reply, BinaryPrimitives.ReadUInt32LittleEndian(header));
            BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(4), 0x5);
            BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(8), 8);
            BinaryPrimitives.WriteUInt64LittleEndian(reply.AsSpan(12), 1UL << 30);
            peer.Send(reply);
            _ = peer.Receive(new byte[64]);
        });
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", $"{path},type=blk");
        accept.Wait(TimeSpan.FromSeconds(30));
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
            Assert.That(r.Stderr, Does.Contain("VERSION_1").And.Contain(path));
        });
    }

    [Test]
    public void Bad_vhost_user_options_are_usage_errors_in_one_sentence()
    {
        VmmProcess.Result r = VmmProcess.Run("run", "--vhost-user", "/tmp/x.sock,type=floppy");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1));
            Assert.That(r.Stderr, Does.Contain("floppy"));
        });
    }

    [Test]
    public void Connection_loss_and_recovery_are_logged_one_line_each()
    {
        using var image = new TempImage(1 << 20, seed: 28);
        string socket = _dir["blk.sock"];
        ServeProcess serve = ServeProcess.Blk(image.Path, socket);
        var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = VmmProcess.RepoRoot,
        };
        foreach (string a in (string[])["run", "--vhost-user", $"{socket},type=blk", "--workload", "idle"])
        {
            start.ArgumentList.Add(a);
        }

        using Process run = Process.Start(start)!;
        run.StandardInput.Close();
        var lines = new System.Collections.Concurrent.BlockingCollection<string>();
        run.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lines.Add(e.Data);
            }
        };
        run.BeginErrorReadLine();
        try
        {
            Assert.That(NextLine(lines, "running"), Is.Not.Null, "vmm run did not start idling");
            serve.Dispose();
            string? lost = NextLine(lines, "connection lost");
            serve = ServeProcess.Blk(image.Path, socket);
            string? restored = NextLine(lines, "connection restored");
            Assert.Multiple(() =>
            {
                Assert.That(lost, Does.StartWith($"vmm: vhost-user blk0 ({socket}): connection lost"));
                Assert.That(restored, Does.StartWith($"vmm: vhost-user blk0 ({socket}): connection restored"));
            });
        }
        finally
        {
            using (Process kill = Process.Start("kill", ["-TERM", run.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                kill.WaitForExit();
            }

            if (!run.WaitForExit(TimeSpan.FromSeconds(30)))
            {
                run.Kill(entireProcessTree: true);
            }

            serve.Dispose();
        }

        Assert.That(run.ExitCode, Is.Zero);
    }

    [Test]
    public void Demo_exits_0_and_prints_the_results_table()
    {
        VmmProcess.Result r = VmmProcess.Run("demo", "--seconds", "1");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Does.Contain("verify").And.Contain("equal (64 MiB"));
            Assert.That(r.Stdout, Does.Contain("randread 4k qd32").And.Contain("randwrite 4k qd32"));
            Assert.That(r.Stdout, Does.Contain("IOPS").And.Contain("MiB/s").And.Contain("p50 µs").And.Contain("p99 µs"));
            Assert.That(r.Stdout, Does.Match(@"features\s+0x[0-9a-f]+ .*VERSION_1"));
            Assert.That(r.Stdout, Does.Not.Contain("errors"));
        });

        // Everything it made is gone: the image directory and its socket.
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        System.Text.RegularExpressions.Match made = System.Text.RegularExpressions.Regex.Match(r.Stdout, @"image\s+(\S+)");
        Assert.That(made.Success, Is.True);
        Assert.That(made.Groups[1].Value, Does.StartWith(root));
        Assert.That(File.Exists(made.Groups[1].Value), Is.False, "the demo left its image behind");
        Assert.That(Directory.Exists(Path.GetDirectoryName(made.Groups[1].Value)), Is.False, "the demo left its directory behind");
    }

    private static string? NextLine(System.Collections.Concurrent.BlockingCollection<string> lines, string containing)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            if (lines.TryTake(out string? line, TimeSpan.FromSeconds(1)) && line.Contains(containing, StringComparison.Ordinal))
            {
                return line;
            }
        }

        return null;
    }

    private static void AssertHoldsPattern(byte[] bytes, int length)
    {
        Assert.That(bytes, Has.Length.EqualTo(length));
        for (int o = 0; o < length; o += 8)
        {
            // The documented pattern (docs/cli.md): word n = n * 0x9E3779B97F4A7C15 + 0x0123456789ABCDEF.
            ulong want = unchecked(((ulong)(o / 8) * 0x9E3779B97F4A7C15UL) + 0x0123456789ABCDEFUL);
            if (BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(o)) != want)
            {
                Assert.Fail($"byte {o} does not hold the pattern");
            }
        }
    }
}
