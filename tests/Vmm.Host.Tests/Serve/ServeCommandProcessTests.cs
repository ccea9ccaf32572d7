using System.Diagnostics;
using Vmm.Host.Tests.Run;
using Vmm.TestKit;

namespace Vmm.Host.Tests.Serve;

[TestFixture]
[NonParallelizable]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class ServeCommandProcessTests
{
    private DirectoryInfo _dir = null!;

    [OneTimeSetUp]
    public void BuildOnce() => ServeProcess.EnsureBuilt();

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("vmm-serve-");

    [TearDown]
    public void TearDown() => _dir.Delete(recursive: true);

    [Test]
    public void A_missing_disk_is_one_sentence_and_exit_2()
    {
        VmmProcess.Result result = VmmProcess.Run("serve", "blk", "--socket", Path.Combine(_dir.FullName, "s.sock"), "--disk", Path.Combine(_dir.FullName, "none.img"));

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1));
        Assert.That(result.Stderr, Does.Contain("does not exist"));
    }

    [TestCase("--queues", "0")]
    [TestCase("--queues", "65")]
    [TestCase("--queue-size", "1")]
    public void Out_of_range_options_are_exit_2(string option, string value)
    {
        string image = MakeImage();
        VmmProcess.Result result = VmmProcess.Run("serve", "blk", "--socket", Path.Combine(_dir.FullName, "s.sock"), "--disk", image, option, value);

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1));
    }

    [Test]
    public void An_unknown_memory_mode_is_one_sentence_and_exit_2()
    {
        string image = MakeImage();
        VmmProcess.Result result = VmmProcess.Run("serve", "blk", "--socket", Path.Combine(_dir.FullName, "s.sock"), "--disk", image, "--memory", "loose");

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1));
        Assert.That(result.Stderr, Does.Contain("'guard' or 'strict'"));
    }

    [Test]
    public async Task SIGTERM_while_frontends_misbehave_stops_the_server_cleanly()
    {
        // A connected front-end that said nothing, and one cut off in the middle of a message,
        // when SIGTERM arrives: the stop cancels what they left running, on the main flow.
        string image = MakeImage();
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using Process server = StartServer(socket, image, "--memory", "strict");
        using var silent = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await silent.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(socket));
        using var partial = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await partial.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(socket));
        await partial.SendAsync(new byte[] { 1, 0, 0, 0, 1 });

        Assert.That(Stop(server), Is.Zero);
        Assert.That(File.Exists(socket), Is.False);
    }

    [Test]
    public void A_socket_held_by_a_live_server_is_refused_and_the_first_server_keeps_it()
    {
        string image = MakeImage();
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using Process first = StartServer(socket, image);

        VmmProcess.Result second = VmmProcess.Run("serve", "blk", "--socket", socket, "--disk", image);

        Assert.That(second.ExitCode, Is.EqualTo(2));
        Assert.That(second.StderrLines, Has.Length.EqualTo(1));
        Assert.That(second.Stderr, Does.Contain("in use"));
        Assert.That(first.HasExited, Is.False);
        Assert.That(File.Exists(socket), Is.True);
        Stop(first);
    }

    [TestCase("--cache", "directsync")]
    [TestCase("--aio", "native")]
    public void Unknown_cache_and_aio_modes_are_one_sentence_and_exit_2(string option, string value)
    {
        string image = MakeImage();
        VmmProcess.Result result = VmmProcess.Run("serve", "blk", "--socket", Path.Combine(_dir.FullName, "s.sock"), "--disk", image, option, value);

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1));
        Assert.That(result.Stderr, Does.Contain(value).And.Contain(option.TrimStart('-')));
    }

    [TestCase("none", "io_uring", "cache=none (O_DIRECT), aio=io_uring")]
    [TestCase("writeback", "threads", "cache=writeback, aio=threads")]
    public void The_server_says_in_one_line_how_it_opened_the_disk_and_which_engine_runs(string cache, string aio, string expected)
    {
        string image = MakeImage();
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        var stderr = new List<string>();
        using Process server = StartServer(socket, image, stderr, "--cache", cache, "--aio", aio);
        DateTime deadline = DateTime.UtcNow.AddSeconds(60);
        string? line = null;
        while (line is null)
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "no disk line on stderr");
            lock (stderr)
            {
                line = stderr.FirstOrDefault(l => l.Contains("Disk ", StringComparison.Ordinal));
            }

            Thread.Sleep(20);
        }

        Assert.That(line, Does.Contain(image).And.Contain(expected));
        Assert.That(Stop(server), Is.Zero);
    }

    [Test]
    public void A_block_device_is_served_exclusively()
    {
        LoopDevice? loop = LoopDevice.TryCreate(8 << 20, 512, out string reason);
        if (loop is null)
        {
            Assert.Ignore(reason);
        }

        using (loop)
        {
            using Process first = StartServer(Path.Combine(_dir.FullName, "a.sock"), loop!.Path, "--cache", "none");
            VmmProcess.Result second = VmmProcess.Run("serve", "blk", "--socket", Path.Combine(_dir.FullName, "b.sock"), "--disk", loop.Path);

            Assert.That(second.ExitCode, Is.EqualTo(2));
            Assert.That(second.StderrLines, Has.Length.EqualTo(1));
            Assert.That(second.Stderr, Does.Contain("exclusively").And.Contain(loop.Path));
            Assert.That(first.HasExited, Is.False);
            Assert.That(Stop(first), Is.Zero);
        }
    }

    [Test]
    public void SIGTERM_stops_the_server_cleanly_and_removes_its_socket()
    {
        string image = MakeImage();
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using Process server = StartServer(socket, image);
        Assert.That(File.GetUnixFileMode(socket), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite), "only the owner may connect");

        Assert.That(Stop(server), Is.Zero);
        Assert.That(File.Exists(socket), Is.False);
    }

    [Test]
    public void A_stale_socket_file_is_replaced()
    {
        string image = MakeImage();
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using (Process old = StartServer(socket, image))
        {
            // A server killed outright leaves its socket file behind.
            old.Kill();
            old.WaitForExit();
        }

        Assert.That(File.Exists(socket), Is.True);
        using Process server = StartServer(socket, image);
        Assert.That(Stop(server), Is.Zero);
    }

    private string MakeImage()
    {
        string path = Path.Combine(_dir.FullName, "disk.img");
        using FileStream f = File.Create(path);
        f.SetLength(1 << 20);
        return path;
    }

    private static Process StartServer(string socket, string image, params string[] extra) => StartServer(socket, image, null, extra);

    private static Process StartServer(string socket, string image, List<string>? stderr, params string[] extra) =>
        ServeProcess.Start(socket, image, stderr, null, extra);

    private static int Stop(Process process) => ServeProcess.Stop(process);
}
