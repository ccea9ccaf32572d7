using Akka.Actor;
using BenchmarkDotNet.Attributes;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Virtio.Driver;

namespace Vmm.Benchmarks;

/// <summary>How a back-end's call eventfd reaches the guest on a function-backed line.</summary>
public enum NotifierPath
{
    /// <summary>A thread per queue blocked in read(2), one RaiseInterrupt message per call to the controller, which signals the guest.</summary>
    ThreadPerQueueMessage,

    /// <summary>A thread per queue blocked in read(2), raising through the controller's port: the guest's eventfd is signalled on that thread.</summary>
    ThreadPerQueuePort,

    /// <summary>One EventNotifierLoop for all queues (epoll), raising through the controller's port.</summary>
    LoopPort,
}

/// <summary>
/// A call's trip from a vhost-user back-end's eventfd write to the guest driver's wake-up on a
/// function-backed line, for each <see cref="NotifierPath"/>: the benchmark thread plays the
/// back-end (writes every queue's call eventfd) and the guest (waits on every queue's vector
/// eventfd). With one queue this is the latency of one call; with several, the cost of a burst
/// that finds several queues ready at once (the loop takes them in one epoll_wait).
/// </summary>
[MemoryDiagnoser]
public class NotifierBenchmarks
{
    private const int FirstVector = 64;

    private ActorSystem _system = null!;
    private GuestInterruptEvents _guest = null!;
    private EventFd[] _calls = [];
    private EventFd[] _wakes = [];
    private readonly List<Thread> _threads = [];
    private readonly List<IDisposable> _registrations = [];
    private EventNotifierLoop? _loop;

    [Params(NotifierPath.ThreadPerQueueMessage, NotifierPath.ThreadPerQueuePort, NotifierPath.LoopPort)]
    public NotifierPath Path { get; set; }

    [Params(1, 8)]
    public int Queues { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _system = ActorSystem.Create("notifier-bench", "akka.loglevel = WARNING");
        _guest = new GuestInterruptEvents();
        IActorRef controller = _system.ActorOf(InterruptControllerActor.Props(_guest));
        var port = new InterruptPort();
        controller.Tell(new AttachInterruptPort(port));
        controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        if (Path == NotifierPath.LoopPort)
        {
            _loop = new EventNotifierLoop("bench-notifier");
        }

        _calls = new EventFd[Queues];
        _wakes = new EventFd[Queues];
        for (int q = 0; q < Queues; q++)
        {
            int vector = FirstVector + q;
            _wakes[q] = _guest.Get(vector);
            EventFd call = _calls[q] = new EventFd();
            InterruptLine line = Path == NotifierPath.ThreadPerQueueMessage
                ? FunctionBackedInterruptLine.ToController(vector, controller)
                : port.CreateLine(vector);
            if (_loop is not null)
            {
                _registrations.Add(_loop.Watch(call, _ => line.Raise()));
            }
            else
            {
                var thread = new Thread(() =>
                {
                    while (call.Wait())
                    {
                        line.Raise();
                    }
                })
                { IsBackground = true, Name = $"call {q}" };
                thread.Start();
                _threads.Add(thread);
            }
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (IDisposable registration in _registrations)
        {
            registration.Dispose();
        }

        _loop?.Dispose();
        foreach (EventFd call in _calls)
        {
            call.Dispose();
        }

        foreach (Thread thread in _threads)
        {
            thread.Join();
        }

        _guest.Dispose();
        _system.Terminate().GetAwaiter().GetResult();
    }

    /// <summary>Every queue's call signalled once, then every queue's guest wake-up awaited.</summary>
    [Benchmark]
    public void CallToGuestWake()
    {
        foreach (EventFd call in _calls)
        {
            call.Signal();
        }

        foreach (EventFd wake in _wakes)
        {
            wake.Wait();
        }
    }
}
