using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Vmm.Interop.Tests.Harness;

/// <summary>
/// A child process with stdin from /dev/null and stdout/stderr collected line by line.
/// Every live child is killed (with its process tree) when the test host exits, so that a
/// crashed or aborted run leaves no QEMU or back-end behind.
/// </summary>
public sealed class ChildProcess : IDisposable
{
    static readonly ConcurrentDictionary<ChildProcess, byte> Live = new();

    static ChildProcess()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var child in Live.Keys)
                child.KillTree();
        };
    }

    readonly Process _process;
    readonly StringBuilder _output = new();
    readonly Lock _lock = new();
    readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly TaskCompletionSource _streamsClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    int _pendingStreams = 2;

    ChildProcess(string name, string file, IReadOnlyList<string> args, IDictionary<string, string?>? env)
    {
        Name = name;
        CommandLine = [file, .. args];
        // /bin/sh only redirects stdin and then becomes the program (exec): the pid is the program's.
        var psi = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec \"$0\" \"$@\" </dev/null");
        psi.ArgumentList.Add(file);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        if (env is not null)
        {
            foreach (var (k, v) in env)
            {
                if (v is null) psi.Environment.Remove(k);
                else psi.Environment[k] = v;
            }
        }

        _process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => OnLine(e.Data);
        _process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        _process.Exited += (_, _) => _ = CompleteOnExitAsync();
        if (!_process.Start())
            throw new InvalidOperationException($"Could not start {file}.");
        Pid = _process.Id;
        Live[this] = 0;
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string Name { get; }
    public int Pid { get; }
    public IReadOnlyList<string> CommandLine { get; }

    /// <summary>Called for each line of stdout or stderr (without the line ending).</summary>
    public event Action<string>? Line;

    public Task Exited => _exited.Task;
    public bool HasExited => _exited.Task.IsCompleted;
    public int? ExitCode { get; private set; }

    /// <summary>Everything the process wrote so far (stdout and stderr interleaved).</summary>
    public string Output
    {
        get { lock (_lock) return _output.ToString(); }
    }

    public string OutputTail(int lines = 40)
    {
        var all = Output.Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }

    public string Describe() => $"{Name} (pid {Pid}): {Quote(CommandLine)}";

    public static string Quote(IEnumerable<string> words) =>
        string.Join(' ', words.Select(w => w.Length > 0 && w.All(c => char.IsAsciiLetterOrDigit(c) || "-_=,./:+@".Contains(c)) ? w : $"'{w.Replace("'", "'\\''")}'"));

    public static ChildProcess Start(string name, string file, IReadOnlyList<string> args, IDictionary<string, string?>? env = null) =>
        new(name, file, args, env);

    /// <summary>
    /// Runs one of the repository's installer scripts (<c>bash SCRIPT --quiet</c>, 5 minutes at
    /// most) and returns the last line it printed that is an absolute path; fails the test, with
    /// <paramref name="what"/> and the script's output, when it cannot.
    /// </summary>
    public static async Task<string> RunScriptForPathAsync(string script, string what)
    {
        if (!File.Exists(script))
            Assert.Fail($"The script {script} is missing.");
        using var p = Start(Path.GetFileNameWithoutExtension(script), "/bin/bash", [script, "--quiet"]);
        if (!await p.WaitForExitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false))
            Assert.Fail($"{script} did not finish within 5 minutes:\n{p.OutputTail()}");
        var path = p.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault(l => l.StartsWith('/'));
        if (p.ExitCode != 0 || path is null)
            Assert.Fail($"{what} ({script} exited {p.ExitCode}):\n{p.OutputTail()}");
        return path!;
    }

    void OnLine(string? line)
    {
        if (line is null)
        {
            if (Interlocked.Decrement(ref _pendingStreams) == 0)
                _streamsClosed.TrySetResult();
            return;
        }
        line = line.TrimEnd('\r');
        lock (_lock) _output.Append(line).Append('\n');
        Line?.Invoke(line);
    }

    async Task CompleteOnExitAsync()
    {
        // Let the last output drain (a descendant holding the pipes open must not block us).
        await Task.WhenAny(_streamsClosed.Task, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
        try { ExitCode = _process.ExitCode; }
        catch (InvalidOperationException) { }
        Live.TryRemove(this, out _);
        _exited.TrySetResult();
    }

    public bool Signal(int signal) => !HasExited && Posix.Kill(Pid, signal);

    /// <summary>SIGKILL to the process and all its descendants.</summary>
    public void KillTree()
    {
        try
        {
            if (!_process.HasExited)
                _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException) { }
        catch (System.ComponentModel.Win32Exception) { }
    }

    /// <summary>Waits for the exit; false on timeout.</summary>
    public async Task<bool> WaitForExitAsync(TimeSpan timeout)
    {
        var done = await Task.WhenAny(Exited, Task.Delay(timeout)).ConfigureAwait(false);
        return done == Exited;
    }

    /// <summary>SIGTERM, then SIGKILL (whole tree) if still running after <paramref name="grace"/>.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (HasExited) return;
        Signal(Posix.SigTerm);
        if (await WaitForExitAsync(grace).ConfigureAwait(false)) return;
        KillTree();
        await WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
    }

    public void Dispose()
    {
        KillTree();
        Live.TryRemove(this, out _);
        _process.Dispose();
    }
}
