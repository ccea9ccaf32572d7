using System.Collections.Concurrent;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

/// <summary>
/// A queue worker with a request processor (the asynchronous path the block device takes):
/// requests complete in an order the test chooses, unlike the order they were made available
/// (virtio 1.2, 2.7.8 and 2.8.9: the used ring / used descriptors carry each buffer's id, so
/// any order is valid), and a stopping queue returns everything in flight first.
/// </summary>
[TestFixture]
public sealed class OutOfOrderCompletionTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void Requests_complete_in_the_order_the_device_finishes_them(bool packed, ulong features)
    {
        const int count = 12;
        using QueueHarness h = QueueHarness.Create(packed, 32, features);
        using var device = new DeferringDevice();
        device.StartQueue(0, h.Resources, h.Features);
        DriverBuffer[][] requests = Enumerable.Range(0, count).Select(i => h.Request((uint)(100 + i))).ToArray();
        for (int i = 0; i < count; i++)
        {
            Assert.That(h.Driver.TrySubmit(requests[i], i), Is.True);
        }

        h.Kick.Signal();
        device.Processor.WaitUntilStarted(count, Timeout);

        // Finish them in an order unlike the submission: odd ones backwards, then even ones backwards.
        int[] order = [.. Enumerable.Range(0, count).Where(i => i % 2 == 1).Reverse(), .. Enumerable.Range(0, count).Where(i => i % 2 == 0).Reverse()];
        device.Processor.Finish(order.Select(i => (uint)(100 + i)));

        var tokens = new List<int>();
        var lengths = new List<uint>();
        DateTime deadline = DateTime.UtcNow + Timeout;
        while (tokens.Count < count)
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"only {tokens.Count} of {count} completions arrived");
            if (h.Driver.TryTakeUsed(out object? token, out uint written))
            {
                tokens.Add((int)token!);
                lengths.Add(written);
            }
            else if (!h.Driver.EnableInterrupts())
            {
                h.InterruptSignal.Wait(50);
            }
        }

        Assert.That(tokens, Is.EqualTo(order), "used entries in completion order, each naming its own request");
        Assert.That(lengths, Is.All.EqualTo(4));
        Assert.That(requests.Select(h.ReadTag), Is.EqualTo(Enumerable.Range(100, count).Select(i => (uint)i)), "each buffer got its own answer");
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(32), "every descriptor back with the driver");
        Assert.That(h.Interrupts, Is.GreaterThan(0));
        Assert.That(device.StopQueue(0), Is.Not.Null);
    }

    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void Stopping_a_queue_returns_every_request_in_flight_before_its_state_is_read(bool packed, ulong features)
    {
        const int count = 5;
        using QueueHarness h = QueueHarness.Create(packed, 16, features);
        using var device = new DeferringDevice();
        device.StartQueue(0, h.Resources, h.Features);
        for (int i = 0; i < count; i++)
        {
            Assert.That(h.Driver.TrySubmit(h.Request((uint)i), i), Is.True);
        }

        h.Kick.Signal();
        device.Processor.WaitUntilStarted(count, Timeout);

        Task<VirtqueueState?> stop = Task.Run(() => device.StopQueue(0));

        // The worker is waiting for the requests in flight: only now do they finish, backwards.
        Assert.That(device.Processor.WaitingForCompletion.Wait(Timeout), Is.True, "the stopping worker waits for its requests");
        Assert.That(stop.IsCompleted, Is.False, "the stop cannot be done while requests are in flight");
        device.Processor.Finish([4, 3, 2, 1, 0]);
        Assert.That(stop.Wait(Timeout), Is.True);

        VirtqueueState state = stop.Result!.Value;
        var tokens = new List<int>();
        while (h.Driver.TryTakeUsed(out object? token, out _))
        {
            tokens.Add((int)token!);
        }

        Assert.That(tokens, Is.EqualTo(new[] { 4, 3, 2, 1, 0 }));
        Assert.That(state.AvailableIndex, Is.EqualTo(state.UsedIndex), "nothing taken and not returned");
        Assert.That(device.Processor.Disposed, Is.True, "the worker disposed its processor");
    }

    /// <summary>A device whose requests finish only when the test says so.</summary>
    private sealed class DeferringDevice() : VirtioDeviceBase(VirtioDeviceId.Entropy, SupportedRingFeatures, 1, 256)
    {
        public DeferringProcessor Processor { get; private set; } = null!;

        public override int ConfigSize => 0;

        public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

        public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
        {
        }

        protected override IQueueRequestProcessor CreateRequestProcessor(int queueIndex, GuestMemory memory, ushort queueSize) =>
            Processor = new DeferringProcessor(memory);
    }

    /// <summary>
    /// Holds every chain it is given; <see cref="Finish"/> (any thread) names the tags to complete,
    /// in that order, and wakes the worker through the completion eventfd.
    /// </summary>
    private sealed class DeferringProcessor(GuestMemory memory) : IQueueRequestProcessor
    {
        private readonly Dictionary<uint, DescriptorChain> _held = [];
        private readonly ConcurrentQueue<uint> _finish = new();
        private readonly EventFd _finished = new();
        private int _started;

        public int InFlight => _held.Count;

        public SafeFileDescriptor? CompletionHandle => _finished.Handle;

        public bool WaitsForEvents => false;

        public QueueWake WaitForWork(EventFd? kick, EventFd stop, int timeoutMilliseconds) => throw new NotSupportedException();

        public ManualResetEventSlim WaitingForCompletion { get; } = new();

        public bool Disposed { get; private set; }

        public void WaitUntilStarted(int count, TimeSpan timeout)
        {
            DateTime deadline = DateTime.UtcNow + timeout;
            while (Volatile.Read(ref _started) < count)
            {
                Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"only {_started} of {count} requests reached the device");
                Thread.Sleep(5);
            }
        }

        public void Finish(IEnumerable<uint> tags)
        {
            foreach (uint tag in tags)
            {
                _finish.Enqueue(tag);
            }

            _finished.Signal();
        }

        public bool Start(DescriptorChain chain, out uint bytesWritten)
        {
            _held.Add(memory.ReadUInt32(chain.Segments[0].Address), chain);
            Interlocked.Increment(ref _started);
            bytesWritten = 0;
            return false;
        }

        public void Submit()
        {
        }

        public int Reap(IDeviceQueue queue)
        {
            _finished.TryConsume();
            int n = 0;
            while (_finish.TryDequeue(out uint tag))
            {
                DescriptorChain chain = _held[tag];
                _held.Remove(tag);
                memory.WriteUInt32(chain.Segments[^1].Address, tag);
                queue.Complete(chain, 4);
                n++;
            }

            return n;
        }

        public void WaitForCompletion()
        {
            WaitingForCompletion.Set();
            if (_finish.IsEmpty)
            {
                _finished.Wait();
            }
        }

        public void Dispose()
        {
            Disposed = true;
            _finished.Dispose();
        }
    }
}
