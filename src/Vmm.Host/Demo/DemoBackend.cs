using System.Diagnostics;
using System.Text;
using Vmm.Core.Posix;
using Vmm.Host.Cli;

namespace Vmm.Host.Demo;

/// <summary>
/// The demo's back-end: a RAM-backed image (under /dev/shm when it exists) served by
/// <c>vmm serve blk</c> in a child process of this same executable. <see cref="Stop"/> ends the
/// child with SIGTERM (SIGKILL after 10 s); <see cref="Dispose"/> also removes the image, the
/// socket and their directory.
/// </summary>
public sealed class DemoBackend : IDisposable
{
    /// <summary>How long the child may take to create its socket (it starts the .NET runtime).</summary>
    public static readonly TimeSpan SocketTimeout = TimeSpan.FromSeconds(30);

    private readonly StringBuilder _log = new();
    private Process? _process;

    private DemoBackend(string directory)
    {
        Directory = directory;
        ImagePath = Path.Combine(directory, "disk.img");
        SocketPath = Path.Combine(directory, "blk.sock");
    }

    public string Directory { get; }

    public string ImagePath { get; }

    public string SocketPath { get; }

    public int ProcessId { get; private set; }

    /// <summary>What the child wrote on stderr so far.</summary>
    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    public static DemoBackend Start(long imageSize, CancellationToken cancellationToken)
    {
        string root = System.IO.Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        string directory = Path.Combine(root, $"vmm-demo-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        var backend = new DemoBackend(directory);
        try
        {
            System.IO.Directory.CreateDirectory(directory);
            using (var image = new FileStream(backend.ImagePath, FileMode.CreateNew, FileAccess.Write))
            {
                image.SetLength(imageSize);
            }

            backend.StartChild();
            backend.WaitForSocket(cancellationToken);
            return backend;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            backend.Dispose();
            throw new UsageException($"Cannot set up the demo's disk image in {root}: {e.Message}", e);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    private void StartChild()
    {
        // The same program: `dotnet vmm.dll` (as ./vmm runs it) or the vmm apphost.
        string host = Environment.ProcessPath ?? throw new UsageException("Cannot find this program's own executable to start the back-end.");
        var start = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            start.ArgumentList.Add(typeof(DemoBackend).Assembly.Location);
        }

        foreach (string a in (string[])["serve", "blk", "--socket", SocketPath, "--disk", ImagePath])
        {
            start.ArgumentList.Add(a);
        }

        _process = Process.Start(start) ?? throw new UsageException($"Cannot start {host} for the back-end.");
        ProcessId = _process.Id;
        _process.StandardInput.Close();
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (_log)
                {
                    _log.AppendLine(e.Data);
                }
            }
        };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    private void WaitForSocket(CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(SocketPath))
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (_process!.HasExited)
            {
                throw new WorkloadFailedException($"The back-end (vmm serve blk) exited with code {_process.ExitCode} before it listened: {LastLine()}");
            }

            if (clock.Elapsed > SocketTimeout)
            {
                throw new WorkloadFailedException($"The back-end (vmm serve blk) did not create {SocketPath} within {SocketTimeout.TotalSeconds:0} s.");
            }

            Thread.Sleep(20);
        }
    }

    private string LastLine()
    {
        string[] lines = Log.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return lines.Length == 0 ? "(no output)" : lines[^1];
    }

    /// <summary>SIGTERM, then SIGKILL if the child is still there after 10 s. Safe to call twice.</summary>
    public void Stop()
    {
        Process? process = _process;
        if (process is null)
        {
            return;
        }

        try
        {
            if (!process.HasExited)
            {
                ProcessSignals.Terminate(process.Id);
                if (!process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    process.Kill(entireProcessTree: true);
                    process.WaitForExit(TimeSpan.FromSeconds(5));
                }
            }
        }
        catch (InvalidOperationException)
        {
            // It had already gone.
        }
        finally
        {
            process.Dispose();
            _process = null;
        }
    }

    public void Dispose()
    {
        Stop();
        try
        {
            if (System.IO.Directory.Exists(Directory))
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }
        }
        catch (IOException)
        {
            // Best effort: a leftover in /dev/shm is reported by nobody, but costs only the image's pages.
        }
    }
}
