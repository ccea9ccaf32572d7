using System.Collections.Concurrent;
using Vmm.Core.Events;

namespace Vmm.Core.Posix.Storage;

/// <summary>
/// Runs operations on dedicated threads that block in the system calls (what QEMU calls
/// aio=threads): the fallback where io_uring is unavailable, and the home of operations io_uring
/// has no opcode for (the block-device ioctls). Threads are started as requests outnumber idle
/// ones, up to a limit, and live until the engine is disposed; finished operations wake the
/// owner through an eventfd.
/// </summary>
/// <remarks>
/// Dedicated threads, not the .NET thread pool: blocking pool threads for disk I/O would starve
/// everything else on a small machine.
/// </remarks>
public sealed class ThreadPoolIoEngine : IIoEngine
{
    /// <summary>Default thread limit: as many as a deep queue keeps busy (QEMU's pool allows 64).</summary>
    public const int DefaultMaxThreads = 64;

    private readonly DiskFile _disk;
    private readonly int _maxThreads;
    private readonly string _threadName;
    private readonly object _lock = new();
    private readonly Queue<IoRequest> _queued = new();
    private readonly List<Thread> _threads = [];
    private readonly List<IoRequest> _batch = [];
    private readonly ConcurrentQueue<IoCompletion> _finished = new();
    private readonly EventFd _completed = new();
    private int _idle;
    private int _inFlight;
    private bool _disposed;

    public ThreadPoolIoEngine(DiskFile disk, int maxThreads = DefaultMaxThreads, string threadName = "disk-io")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxThreads);
        _disk = disk ?? throw new ArgumentNullException(nameof(disk));
        _maxThreads = maxThreads;
        _threadName = threadName;
    }

    public IoEngineKind Kind => IoEngineKind.Threads;

    public int InFlight => _inFlight;

    public SafeFileDescriptor? CompletionHandle => _completed.Handle;

    /// <summary>Threads started so far.</summary>
    public int ThreadCount
    {
        get
        {
            lock (_lock)
            {
                return _threads.Count;
            }
        }
    }

    public bool Start(in IoRequest request, out int result)
    {
        _batch.Add(request);
        _inFlight++;
        result = 0;
        return false;
    }

    public void Submit()
    {
        if (_batch.Count == 0)
        {
            return;
        }

        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            foreach (IoRequest request in _batch)
            {
                _queued.Enqueue(request);
            }

            while (_queued.Count > _idle && _threads.Count < _maxThreads)
            {
                var thread = new Thread(Work) { IsBackground = true, Name = $"{_threadName}-{_threads.Count}" };
                _threads.Add(thread);
                _idle++;
                thread.Start();
            }

            // One waiter per request: waking every idle thread for one request only makes them race.
            for (int i = 0; i < _batch.Count; i++)
            {
                Monitor.Pulse(_lock);
            }
        }

        _batch.Clear();
    }

    public int Reap(Span<IoCompletion> completions)
    {
        // Consume the wake-up before draining: a completion queued after the drain signals again.
        _completed.TryConsume();
        int n = 0;
        while (n < completions.Length && _finished.TryDequeue(out IoCompletion done))
        {
            completions[n++] = done;
        }

        _inFlight -= n;
        return n;
    }

    public void WaitForCompletion()
    {
        if (_inFlight == 0 || !_finished.IsEmpty)
        {
            return;
        }

        Submit();
        while (_finished.IsEmpty && _completed.Wait())
        {
        }
    }

    /// <summary>Waits for every started operation, then stops the threads.</summary>
    public void Dispose()
    {
        Submit();
        Span<IoCompletion> sink = stackalloc IoCompletion[16];
        while (_inFlight > 0)
        {
            WaitForCompletion();
            Reap(sink);
        }

        Thread[] threads;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            Monitor.PulseAll(_lock);
            threads = [.. _threads];
        }

        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        _completed.Dispose();
    }

    private void Work()
    {
        while (true)
        {
            IoRequest request;
            lock (_lock)
            {
                while (_queued.Count == 0 && !_disposed)
                {
                    Monitor.Wait(_lock);
                }

                if (_disposed)
                {
                    return;
                }

                request = _queued.Dequeue();
                _idle--;
            }

            int result;
            try
            {
                result = _disk.Execute(request);
            }
            catch (ObjectDisposedException)
            {
                // The disk was closed under the engine: the operation fails, the process lives.
                result = -Interop.Errno.EBADF;
            }

            lock (_lock)
            {
                _idle++;
            }

            _finished.Enqueue(new IoCompletion(request.Tag, result));
            _completed.Signal();
        }
    }
}
