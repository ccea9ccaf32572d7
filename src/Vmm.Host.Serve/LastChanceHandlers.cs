using Microsoft.Extensions.Logging;

namespace Vmm.Host.Serve;

/// <summary>
/// Process-wide handlers of last resort for <c>vmm serve</c>: an exception that escaped every
/// guard is logged as one line rather than lost. An unobserved task exception is marked observed,
/// and the server goes on. An unhandled exception on a thread ends the process whatever a handler
/// does (the runtime's rule); it is logged first, so the log says why the server went.
/// </summary>
internal sealed class LastChanceHandlers : IDisposable
{
    private readonly ILogger _logger;

    public LastChanceHandlers(ILogger logger)
    {
        _logger = logger;
        AppDomain.CurrentDomain.UnhandledException += OnUnhandled;
        TaskScheduler.UnobservedTaskException += OnUnobserved;
    }

    public void Dispose()
    {
        AppDomain.CurrentDomain.UnhandledException -= OnUnhandled;
        TaskScheduler.UnobservedTaskException -= OnUnobserved;
    }

    private void OnUnhandled(object? sender, UnhandledExceptionEventArgs e) =>
        _logger.LogCritical("The server is ending on an unhandled {Type}: {Reason}", e.ExceptionObject.GetType().Name, (e.ExceptionObject as Exception)?.Message);

    private void OnUnobserved(object? sender, UnobservedTaskExceptionEventArgs e)
    {
        e.SetObserved();
        _logger.LogError("A background task failed and nothing was waiting for it: {Reason}", e.Exception.InnerException?.Message ?? e.Exception.Message);
    }
}
