using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// samples/EmbeddingSample is built with this project (a ProjectReference that is not an assembly
/// reference), run here against our back-end on a socket, and quoted by docs/embedding.md.
/// </summary>
[TestFixture]
public sealed partial class EmbeddingSampleTests
{
    private static readonly Lazy<string> s_root = new(() =>
    {
        for (DirectoryInfo? dir = new(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ManagedVmm.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("ManagedVmm.sln not found above the test directory.");
    });

    private static string Root => s_root.Value;

    private static string SampleDirectory => Path.Combine(Root, "samples", "EmbeddingSample");

    [Test]
    public async Task The_sample_reads_sector_0_over_vhost_user_and_exits_0()
    {
        await using BlkBackend backend = BlkBackend.Start();

        Result result = await RunSampleAsync(backend.SocketPath);

        string hex = Convert.ToHexStringLower(backend.Image, 0, 16);
        Assert.Multiple(() =>
        {
            Assert.That(result.ExitCode, Is.EqualTo(0), result.ToString());
            Assert.That(result.Stdout, Does.Contain($"sector 0: {hex}"), result.ToString());
            Assert.That(result.Stdout, Does.Contain($"blk0: {BlkBackend.Sectors} sectors"), result.ToString());
            Assert.That(result.Stdout, Does.Contain("blk0: pci 1af4:1042"), result.ToString());
        });
    }

    [Test]
    public async Task The_sample_exits_2_with_one_sentence_when_nothing_listens()
    {
        string dir = BlkBackend.NewDirectory();
        try
        {
            Result result = await RunSampleAsync(Path.Combine(dir, "missing.sock"));
            Assert.Multiple(() =>
            {
                Assert.That(result.ExitCode, Is.EqualTo(2), result.ToString());
                Assert.That(result.Stderr.Trim(), Does.Contain("does not exist").And.Not.Contain("   at "), result.ToString());
            });
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public async Task The_sample_exits_2_on_bad_usage()
    {
        Result result = await RunSampleAsync();
        Assert.Multiple(() =>
        {
            Assert.That(result.ExitCode, Is.EqualTo(2), result.ToString());
            Assert.That(result.Stderr, Does.StartWith("usage:"), result.ToString());
        });
    }

    [Test]
    public async Task The_sample_watching_sees_a_config_change_reach_the_guest_and_the_connection_lost_and_restored()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using Watcher sample = await Watcher.StartAsync(backend.SocketPath, "--ManagedVmm:Devices:blk0:ReconnectMinBackoff=00:00:00.020");
        await sample.NextLineAsync("watching");

        backend.Resize(128);
        Assert.That(await sample.NextLineAsync("config changed"), Is.EqualTo("blk0: config changed: 128 sectors"), sample.ToString());

        await backend.StopAsync();
        Assert.That(await sample.NextLineAsync("connection lost"), Does.StartWith("blk0: connection lost ("), sample.ToString());
        backend.Restart();
        Assert.That(await sample.NextLineAsync("connection restored"), Does.StartWith("blk0: connection restored (attempt "), sample.ToString());

        Assert.That(await sample.StopAsync(), Is.EqualTo(0), sample.ToString());
    }

    [Test]
    public async Task The_sample_watching_sees_a_give_up_set_DEVICE_NEEDS_RESET_with_reconnect_off_from_configuration()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using Watcher sample = await Watcher.StartAsync(backend.SocketPath, "--ManagedVmm:Devices:blk0:Reconnect=false");
        await sample.NextLineAsync("watching");

        await backend.StopAsync();
        Assert.That(await sample.NextLineAsync("gave up"), Does.StartWith("blk0: gave up: connection lost and reconnect is off"), sample.ToString());
        Assert.That(await sample.NextLineAsync("needs a reset"), Is.EqualTo("blk0: the device needs a reset (DEVICE_NEEDS_RESET)"), sample.ToString());
        Assert.That(await sample.StopAsync(), Is.EqualTo(0), sample.ToString());
    }

    /// <summary>Every <c>// &lt;snippet:NAME&gt;</c> block of the sample appears verbatim (dedented) in docs/embedding.md.</summary>
    [Test]
    public void The_embedding_doc_quotes_the_sample()
    {
        string program = File.ReadAllText(Path.Combine(SampleDirectory, "Program.cs"));
        string doc = Normalize(File.ReadAllText(Path.Combine(Root, "docs", "embedding.md")));
        MatchCollection snippets = SnippetRegex().Matches(program);
        Assert.That(snippets, Has.Count.GreaterThanOrEqualTo(5));
        Assert.Multiple(() =>
        {
            foreach (Match m in snippets)
            {
                string body = Normalize(Dedent(m.Groups["body"].Value));
                Assert.That(doc, Does.Contain(body), $"docs/embedding.md does not quote snippet '{m.Groups["name"].Value}' of the sample as it is.");
            }
        });
    }

    [GeneratedRegex(@"^[ \t]*// <snippet:(?<name>[a-z-]+)>[ \t]*\n(?<body>.*?)^[ \t]*// </snippet:\k<name>>", RegexOptions.Multiline | RegexOptions.Singleline)]
    private static partial Regex SnippetRegex();

    private static string Normalize(string text) => text.Replace("\r\n", "\n").Trim();

    private static string Dedent(string text)
    {
        string[] lines = text.Replace("\r\n", "\n").TrimEnd('\n').Split('\n');
        int indent = lines.Where(l => l.Trim().Length > 0).Min(l => l.Length - l.TrimStart().Length);
        return string.Join('\n', lines.Select(l => l.Length >= indent ? l[indent..] : l.TrimStart()));
    }

    /// <summary>The sample in <c>--watch</c> mode: its stdout lines as they come; closing stdin ends it.</summary>
    private sealed class Watcher : IAsyncDisposable
    {
        private static readonly TimeSpan LineTimeout = TimeSpan.FromSeconds(60);
        private readonly Process _process;
        private readonly System.Threading.Channels.Channel<string> _lines = System.Threading.Channels.Channel.CreateUnbounded<string>();
        private readonly System.Collections.Concurrent.ConcurrentQueue<string> _all = new();

        private Watcher(Process process)
        {
            _process = process;
            _process.OutputDataReceived += (_, e) => Add(e.Data, "out");
            _process.ErrorDataReceived += (_, e) => Add(e.Data, "err");
            _process.BeginOutputReadLine();
            _process.BeginErrorReadLine();
        }

        public static async Task<Watcher> StartAsync(string socket, params string[] settings)
        {
            ProcessStartInfo start = SampleStartInfo(await FindOrBuildSampleAsync(), [socket, "--watch", .. settings]);
            return new Watcher(Process.Start(start)!);
        }

        /// <summary>The next stdout line containing <paramref name="text"/> (lines before it are skipped).</summary>
        public async Task<string> NextLineAsync(string text)
        {
            using var cts = new CancellationTokenSource(LineTimeout);
            try
            {
                while (true)
                {
                    string line = await _lines.Reader.ReadAsync(cts.Token);
                    if (line.Contains(text, StringComparison.Ordinal))
                    {
                        return line;
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or System.Threading.Channels.ChannelClosedException)
            {
                Assert.Fail($"The sample printed no line with '{text}'. {this}");
                throw;
            }
        }

        /// <summary>Closes stdin (the sample's signal to stop) and returns its exit code.</summary>
        public async Task<int> StopAsync()
        {
            _process.StandardInput.Close();
            using var cts = new CancellationTokenSource(LineTimeout);
            await _process.WaitForExitAsync(cts.Token);
            return _process.ExitCode;
        }

        public override string ToString() => "Output:\n" + string.Join('\n', _all);

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }

            _process.Dispose();
        }

        private void Add(string? line, string stream)
        {
            if (line is null)
            {
                return;
            }

            _all.Enqueue($"{stream}: {line}");
            if (stream == "out")
            {
                _lines.Writer.TryWrite(line);
            }
        }
    }

    private sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\nstdout:\n{Stdout}\nstderr:\n{Stderr}";
    }

    private static async Task<Result> RunSampleAsync(params string[] args)
    {
        return await RunAsync(SampleStartInfo(await FindOrBuildSampleAsync(), args), TimeSpan.FromMinutes(1));
    }

    /// <summary>dotnet SAMPLE.dll ARGS..., every stream redirected, from the repository's root.</summary>
    private static ProcessStartInfo SampleStartInfo(string dll, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = Root,
        };
        start.ArgumentList.Add(dll);
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        return start;
    }

    /// <summary>The sample's dll from this build's configuration (it is built with the tests), or built now.</summary>
    private static async Task<string> FindOrBuildSampleAsync()
    {
        string configuration = new DirectoryInfo(TestContext.CurrentContext.TestDirectory).Parent!.Name;
        string dll = Path.Combine(SampleDirectory, "bin", configuration, "net10.0", "EmbeddingSample.dll");
        if (File.Exists(dll))
        {
            return dll;
        }

        var build = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = Root };
        foreach (string a in new[] { "build", Path.Combine(SampleDirectory, "EmbeddingSample.csproj"), "-c", configuration, "--nologo", "-v", "q" })
        {
            build.ArgumentList.Add(a);
        }

        Result result = await RunAsync(build, TimeSpan.FromMinutes(5));
        Assert.That(result.ExitCode, Is.EqualTo(0), $"dotnet build of the sample failed: {result}");
        Assert.That(dll, Does.Exist);
        return dll;
    }

    private static async Task<Result> RunAsync(ProcessStartInfo start, TimeSpan timeout)
    {
        using Process process = Process.Start(start)!;
        process.StandardInput.Close();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{start.FileName} {string.Join(' ', start.ArgumentList)} did not exit within {timeout.TotalSeconds:0} s");
        }

        return new Result(process.ExitCode, await stdout, await stderr);
    }
}
